"""User settings in a TOML file in the user config directory, typed and checked.

    model = "~/models/my-gpt"        # checkpoint opened when none is given
    theme = "chatterm-dark"
    system_prompt = ""
    device = "auto"                  # auto, cpu, cuda, mps
    dtype = "auto"                   # auto, fp32, bf16, fp16
    [sampling]                       # any setting of `SamplingSettings`
    temperature = 0.8
    [keys]                           # binding id -> key, e.g. stop = "escape"
    toggle_settings = "f2"

A broken file is reported and the defaults are used; the app never refuses to start over it.
CLI flags override the file.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..engine.settings import SamplingSettings
from .persistence import atomic_write_text

APP_NAME = "chatterm"


def config_dir() -> Path:
    from platformdirs import user_config_dir

    return Path(os.environ.get("CHATTERM_CONFIG_DIR") or user_config_dir(APP_NAME))


def data_dir() -> Path:
    from platformdirs import user_data_dir

    return Path(os.environ.get("CHATTERM_DATA_DIR") or user_data_dir(APP_NAME))


@dataclass
class AppConfig:
    model: str | None = None
    theme: str = "chatterm-dark"
    system_prompt: str = ""
    device: str = "auto"
    dtype: str = "auto"
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    keys: dict[str, str] = field(default_factory=dict)
    path: Path | None = None  # where it was read from / will be written

    def to_toml_dict(self) -> dict:
        data: dict = {"theme": self.theme, "system_prompt": self.system_prompt, "device": self.device, "dtype": self.dtype}
        if self.model:
            data["model"] = self.model
        sampling = {k: v for k, v in self.sampling.to_dict().items() if v is not None}
        data["sampling"] = sampling
        if self.keys:
            data["keys"] = dict(self.keys)
        return data


def default_checkpoint() -> Path:
    """The chat model shipped inside the package."""
    from importlib.resources import files

    return Path(str(files("chatterm") / "checkpoints" / "chitchat"))


def default_config_path() -> Path:
    return config_dir() / "config.toml"


def load_config(path: Path | None = None) -> tuple[AppConfig, list[str]]:
    """Read the config file; return it with the problems found (each one line)."""
    path = Path(path) if path else default_config_path()
    config = AppConfig(path=path)
    if not path.exists():
        return config, []
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        return config, [f"{path}: cannot read the config file ({e}); using defaults"]
    problems: list[str] = []
    for key in ("model", "theme", "system_prompt", "device", "dtype"):
        if key in raw:
            if isinstance(raw[key], str):
                setattr(config, key, raw[key])
            else:
                problems.append(f"{path}: {key} must be a string; ignored")
    for name, value in (raw.get("sampling") or {}).items():
        try:
            config.sampling.set(name, value)
        except ValueError as e:
            problems.append(f"{path}: [sampling] {e}; ignored")
    keys = raw.get("keys") or {}
    if isinstance(keys, dict):
        config.keys = {str(k): str(v) for k, v in keys.items()}
    known = {"model", "theme", "system_prompt", "device", "dtype", "sampling", "keys"}
    for key in sorted(set(raw) - known):
        problems.append(f"{path}: unknown key {key!r}; ignored")
    return config, problems


def save_config(config: AppConfig, path: Path | None = None) -> Path:
    import tomli_w

    path = Path(path or config.path or default_config_path())
    atomic_write_text(path, tomli_w.dumps(config.to_toml_dict()))
    return path
