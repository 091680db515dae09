"""`cache_folder(name)`: where chatterm keeps what it can rebuild (the compiled kernels, their
measured choices, tokenizers' derived merges): `$CHATTERM_CACHE_DIR/<name>`, else the platform's
cache folder (platformdirs: ~/.cache/chatterm/<name> on Linux). Deleting it loses nothing but
time. Imports nothing from chatterm, so every layer can use it."""

from __future__ import annotations

import os
from pathlib import Path


def cache_folder(name: str) -> Path:
    from platformdirs import user_cache_dir

    return Path(os.environ.get("CHATTERM_CACHE_DIR") or user_cache_dir("chatterm")) / name
