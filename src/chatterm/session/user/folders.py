"""Where chatterm keeps things: the user's config folder (config.toml), the data folder (saved
chats, input history, installed models) and the chat model shipped inside the package.

`CHATTERM_CONFIG_DIR` and `CHATTERM_DATA_DIR` move the first two (tests, several profiles);
otherwise they are the platform's own (platformdirs: ~/.config/chatterm, ~/.local/share/chatterm
on Linux).
"""

from __future__ import annotations

import os
from pathlib import Path

APP_NAME = "chatterm"


def config_dir() -> Path:
    from platformdirs import user_config_dir

    return Path(os.environ.get("CHATTERM_CONFIG_DIR") or user_config_dir(APP_NAME))


def data_dir() -> Path:
    from platformdirs import user_data_dir

    return Path(os.environ.get("CHATTERM_DATA_DIR") or user_data_dir(APP_NAME))


def default_checkpoint() -> Path:
    """The chat model shipped inside the package."""
    from importlib.resources import files

    return Path(str(files("chatterm") / "checkpoints" / "chitchat"))
