"""Sampling settings: one typed, validated, documented table (`SPECS`) used by every front end.

`SPECS` is the only list of setting names. The CLI flags (with their help and built-in
defaults), the settings panel's rows and labels, `/set`, the config file's `[sampling]` table
and a model's recommended settings are all generated from it or checked against it, so a value
is checked once, in one place, with one message.

The built-in defaults are llama.cpp's (temperature 0.8, top-k 40, top-p 0.95, min-p 0.05,
repetition penalty 1): a small model sampled from its raw distribution (temperature 1, every
filter off) wanders off too often to be a good first answer. A model's own recommendation wins
over them, and the user's over that (see `session/user/layered_settings.py` for the precedence).
Temperature 0 is plain greedy decoding (argmax), whatever the filters say.

The generator reads the settings object at every step, so a change made while a reply streams
applies to the next token.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, fields, replace

# A number written in a config file must already be a number; text typed by a user is parsed.
TYPED, TEXT = "typed", "text"


@dataclass(frozen=True)
class SettingSpec:
    name: str
    kind: type  # float, int, bool (on/off) or list (of stop strings)
    default: object  # the built-in value (llama.cpp's default)
    low: float | None  # inclusive bounds (None: unbounded)
    high: float | None
    label: str  # short name in the settings panel
    help: str  # one line, for --help, the panel's tooltip and /set errors
    optional: bool = False  # "random"/"none"/"" clears it (seed); "auto" for a bool (thinking)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


SPECS: dict[str, SettingSpec] = {
    s.name: s
    for s in (
        SettingSpec("temperature", float, 0.8, 0.0, 5.0, "temperature",
                    "randomness; 0 means greedy (always the most likely token), 1 the model's own distribution"),
        SettingSpec("top_k", int, 40, 0, 1_000_000, "top-k", "keep only the k most likely tokens; 0 turns it off"),
        SettingSpec("top_p", float, 0.95, 0.0, 1.0, "top-p",
                    "keep the smallest set of tokens whose probability reaches p; 1 turns it off"),
        SettingSpec("min_p", float, 0.05, 0.0, 1.0, "min-p",
                    "drop tokens less likely than min_p times the top token; 0 turns it off"),
        SettingSpec("repetition_penalty", float, 1.0, 0.01, 10.0, "rep. penalty",
                    "divide the logits of recently seen tokens by this; 1 turns it off"),
        SettingSpec("repetition_window", int, 64, 0, 1_000_000, "penalty window",
                    "how many recent tokens the penalty looks at; 0 means all"),
        SettingSpec("max_new_tokens", int, 256, 1, 1_000_000, "max tokens", "the longest reply, in tokens"),
        SettingSpec("seed", int, None, 0, 2**63 - 1, "seed",
                    "random seed for sampling; 'random' picks a new one each reply", optional=True),
        SettingSpec("stop", list, (), None, None, "stop (a|b)",
                    "extra stop strings, separated by '|' (the template's own always apply)"),
        # Not sampling, but set, saved and shown the same way: the template's `enable_thinking`.
        SettingSpec("thinking", bool, None, None, None, "thinking",
                    "on/off: whether a thinking model (Qwen3) reasons before it answers; auto: the model's default",
                    optional=True),
    )
}


def _default(name: str):
    value = SPECS[name].default
    return field(default_factory=list) if SPECS[name].kind is list else value


@dataclass
class SamplingSettings:
    """The values in force. Field defaults are `SPECS`' built-in defaults."""

    temperature: float = _default("temperature")
    top_k: int = _default("top_k")
    top_p: float = _default("top_p")
    min_p: float = _default("min_p")
    repetition_penalty: float = _default("repetition_penalty")
    repetition_window: int = _default("repetition_window")
    max_new_tokens: int = _default("max_new_tokens")
    seed: int | None = _default("seed")
    stop: list[str] = _default("stop")
    thinking: bool | None = _default("thinking")

    def set(self, name: str, value, how: str = TEXT) -> None:
        """Validate and assign one setting; raise ValueError with a one-line reason otherwise."""
        spec = spec_for(name)
        setattr(self, spec.name, parse_value(spec, value, how))

    def update(self, values: dict, how: str = TEXT) -> None:
        """Set several values; all are checked before any is applied."""
        trial = self.copy()
        for name, value in values.items():
            trial.set(name, value, how)
        self.assign(trial)

    def assign(self, other: "SamplingSettings") -> None:
        """Take all of `other`'s values in place (a generator holding this object sees them)."""
        for f in fields(self):
            value = getattr(other, f.name)
            setattr(self, f.name, list(value) if isinstance(value, list) else value)

    def copy(self) -> "SamplingSettings":
        return replace(self, stop=list(self.stop))

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def describe(self, name: str) -> str:
        """The value as text that `set(name, text)` reads back to the same value."""
        return format_value(SPECS[name], getattr(self, name))


def spec_for(name: str) -> SettingSpec:
    """The spec of a setting named by a user ("top-k", "Top_K"); ValueError with a suggestion."""
    key = str(name).strip().lower().replace("-", "_")
    spec = SPECS.get(key)
    if spec is None:
        close = difflib.get_close_matches(key, list(SPECS), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else f"; settings are: {', '.join(SPECS)}"
        raise ValueError(f"unknown setting {key!r}{hint}")
    return spec


_ON, _OFF = ("on", "true", "yes", "1"), ("off", "false", "no", "0")


def format_value(spec: SettingSpec, value) -> str:
    if spec.kind is bool:
        return "auto" if value is None else ("on" if value else "off")
    if spec.optional and value is None:
        return "random"
    if spec.kind is list:
        return "|".join(s.replace("\n", "\\n") for s in value)
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value else repr(value)
    return str(value)


def parse_value(spec: SettingSpec, value, how: str = TEXT):
    """Turn a value into a checked one. TEXT: user input (a string; numbers also accepted).
    TYPED: a value from a TOML or JSON file, which must already have the right type."""
    if spec.kind is list:
        return _parse_stop(spec, value, how)
    if spec.kind is bool:
        return _parse_switch(spec, value, how)
    if spec.optional and (value is None or (isinstance(value, str) and value.strip().lower() in ("none", "random", "", "off"))):
        return None
    if isinstance(value, bool) or (how == TYPED and not isinstance(value, (int, float))):
        raise ValueError(f"{spec.name}: expected {_range(spec)}, got {value!r}")
    number = _number(spec, value)
    if (spec.low is not None and number < spec.low) or (spec.high is not None and number > spec.high):
        raise ValueError(f"{spec.name}: {value!r} is out of range ({_range(spec)})")
    return number


def _number(spec: SettingSpec, value) -> int | float:
    if spec.kind is int:
        if isinstance(value, int):
            return value
        text = str(value).strip().replace("_", "")
        try:
            return int(text)  # exact, however large: seeds up to 2**63-1 are not rounded
        except ValueError:
            pass
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{spec.name}: {value!r} is not a number ({_range(spec)})") from None
    if not math.isfinite(number):
        raise ValueError(f"{spec.name}: {value!r} is not a finite number ({_range(spec)})")
    if spec.kind is int:
        if not number.is_integer():
            raise ValueError(f"{spec.name}: {value!r} is not a whole number ({_range(spec)})")
        return int(number)
    return number


def _parse_stop(spec: SettingSpec, value, how: str) -> list[str]:
    if isinstance(value, (list, tuple)):
        if how == TYPED and not all(isinstance(v, str) for v in value):
            raise ValueError(f"{spec.name}: expected a list of strings, got {value!r}")
        items = [str(v) for v in value]
    elif how == TYPED and not isinstance(value, str):
        raise ValueError(f"{spec.name}: expected a list of strings, got {value!r}")
    else:
        items = str(value).split("|")
    items = [s.replace("\\n", "\n") for s in items if s.strip()]
    if any(len(s) > 200 for s in items):
        raise ValueError(f"{spec.name}: each stop string must be at most 200 characters")
    return items


def _parse_switch(spec: SettingSpec, value, how: str) -> bool | None:
    """on/off (a bool in a file), or auto (None: the model's own default)."""
    if isinstance(value, bool):
        return value
    word = value.strip().lower() if isinstance(value, str) else None
    if word in ("auto", "") or value is None:  # None: auto, as to_dict() writes it (a JSON null)
        return None
    if word in _ON or word in _OFF:
        return word in _ON
    raise ValueError(f"{spec.name}: expected on, off or auto, got {value!r}")


def _range(spec: SettingSpec) -> str:
    if spec.kind is int:
        kind, low, high = "a whole number", f"{int(spec.low)}", f"{int(spec.high)}"
    else:
        kind, low, high = "a number", f"{spec.low:g}", f"{spec.high:g}"
    extra = " or 'random'" if spec.optional else ""
    return f"{kind} from {low} to {high}{extra}"
