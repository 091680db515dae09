"""User settings in a TOML file in the user config directory, typed and checked.

    model = "~/models/my-gpt"        # checkpoint opened when none is given
    theme = "chatterm-dark"
    system_prompt = ""               # saved with `/system TEXT --save`
    device = "auto"                  # auto, cpu, cuda, cuda:N, mps
    dtype = "auto"                   # auto, fp32, bf16, fp16
    [sampling]                       # your defaults, any setting in `SPECS` (`/set NAME VALUE --save`)
    temperature = 0.7
    [keys]                           # binding id -> key, e.g. retry = "f5"
    toggle_settings = "f2"

Every key is checked by type and range when the file is read: a bad value is one warning
naming the key, and its default is used; the app never refuses to start over the file. Only the
values the user saved are kept in `sampling`, so a model's recommendation still applies to the
others (see `layered_settings.py`). Key bindings are checked against the app's actions by the
UI (`ui/keys.py`), which knows them. Saving applies just the change asked for to the file as it
is (`update_config`): what a flag set for one launch (`--system`, `--theme`) never reaches it.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ...atomic import remove_stray_temporaries
from ...engine.settings import TYPED
from ...model.device import check_device, check_dtype
from ...regular_file import read_regular_text
from ..chats.persistence import atomic_write_text
from .folders import config_dir
from .layered_settings import checked_values

MAX_SYSTEM_PROMPT = 20_000  # characters
MAX_CONFIG_BYTES = 1024 * 1024  # the config is a few hundred bytes; a system prompt is capped above


@dataclass
class AppConfig:
    model: str | None = None
    theme: str = "chatterm-dark"
    system_prompt: str = ""
    device: str = "auto"
    dtype: str = "auto"
    # A server's API key: the NAME of the environment variable that holds it, never the key, so
    # no file chatterm writes ever contains a secret (as --api-key-env).
    api_key_env: str | None = None
    sampling: dict = field(default_factory=dict)  # only the values the user saved, checked
    keys: dict[str, str] = field(default_factory=dict)
    path: Path | None = None  # where it was read from / will be written

    def to_toml_dict(self) -> dict:
        data: dict = {"theme": self.theme, "system_prompt": self.system_prompt, "device": self.device, "dtype": self.dtype}
        if self.model:
            data["model"] = self.model
        if self.api_key_env:
            data["api_key_env"] = self.api_key_env
        data["sampling"] = {k: v for k, v in self.sampling.items() if v is not None}
        if self.keys:
            data["keys"] = dict(self.keys)
        return data


def _check_string(value) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _check_system_prompt(value) -> str:
    text = _check_string(value)
    if len(text) > MAX_SYSTEM_PROMPT:
        raise ValueError(f"longer than {MAX_SYSTEM_PROMPT:,} characters")
    return text


def _check_variable_name(value) -> str:
    text = _check_string(value).strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text):
        # Not echoed: a user may have put the key itself here.
        raise ValueError("expected the name of an environment variable (not the key itself)")
    return text


def _check_theme(value) -> str:
    text = _check_string(value).strip()
    if not text:
        raise ValueError("empty theme name")
    return text


# key -> checker returning the value to use (ValueError: warn, keep the default)
_CHECKS = {
    "model": lambda v: _check_string(v).strip() or None,
    "theme": _check_theme,
    "system_prompt": _check_system_prompt,
    "device": lambda v: check_device(_check_string(v)),
    "dtype": lambda v: check_dtype(_check_string(v)),
    "api_key_env": lambda v: _check_variable_name(v),
}


def default_config_path() -> Path:
    return config_dir() / "config.toml"


def load_config(path: Path | None = None) -> tuple[AppConfig, list[str]]:
    """Read the config file; return it with the problems found (each one line)."""
    path = Path(path) if path else default_config_path()
    remove_stray_temporaries(path)  # of a settings save that was killed halfway
    config = AppConfig(path=path)
    if not path.exists():
        return config, []
    try:
        raw = tomllib.loads(read_regular_text(path, MAX_CONFIG_BYTES))  # never blocks on a FIFO
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        return config, [f"{path}: cannot read the config file ({e}); using defaults"]
    problems: list[str] = []
    for key, check in _CHECKS.items():
        if key in raw:
            try:
                setattr(config, key, check(raw[key]))
            except ValueError as e:
                default = getattr(AppConfig(), key)
                problems.append(f"{path}: {key}: {e}; using {default!r}")
    if "sampling" in raw:
        config.sampling, bad = checked_values(raw["sampling"], TYPED, f"{path}: [sampling] ")
        problems += bad
    if "keys" in raw:
        config.keys, bad = _checked_keys(raw["keys"], path)
        problems += bad
    for key in sorted(set(raw) - set(_CHECKS) - {"sampling", "keys"}):
        problems.append(f"{path}: unknown key {key!r}; ignored")
    return config, problems


def _checked_keys(keys, path: Path) -> tuple[dict[str, str], list[str]]:
    if not isinstance(keys, dict):
        return {}, [f"{path}: [keys] must be a table of binding id = \"key\", got {keys!r}; ignored"]
    good, problems = {}, []
    for action, key in keys.items():
        if isinstance(key, str) and key.strip():
            good[action] = key.strip().lower()
        else:
            problems.append(f"{path}: [keys] {action}: expected a key name such as \"f5\", got {key!r}; ignored")
    return good, problems


def save_config(config: AppConfig, path: Path | None = None) -> Path:
    import tomli_w

    path = Path(path or config.path or default_config_path())
    atomic_write_text(path, tomli_w.dumps(config.to_toml_dict()))
    return path


def update_config(path: Path | None, change: Callable[[AppConfig], object]) -> Path:
    """Save one change the user asked for (`/set ... --save`, `/theme`, Ctrl+S): the file is read
    as it is now, `change` is applied to that, and the result written. A session's own values
    (`--system`, `--theme`, `--device` given for one launch) are not in the file, so they never
    leak into it. A file that cannot be read is left alone (ValueError, one line)."""
    path = Path(path) if path else default_config_path()
    config, problems = load_config(path)
    unreadable = next((p for p in problems if p.startswith(f"{path}: cannot read the config file")), None)
    if unreadable is not None:
        raise ValueError(unreadable.removesuffix("; using defaults") + "; fix or remove it to save settings")
    change(config)
    return save_config(config, path)
