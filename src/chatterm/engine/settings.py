"""Sampling settings: one typed, validated, documented table used by every front end.

The CLI flags, `/set`, the side panel and the config file all go through `SamplingSettings.set`,
so a value is checked once, in one place, with one message. The generator reads the settings
object at every step, so a change made while a reply streams applies to the next token.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, fields, replace


@dataclass(frozen=True)
class SettingSpec:
    name: str
    kind: type  # float, int or str-list
    low: float | None  # inclusive bounds (None: unbounded)
    high: float | None
    help: str
    optional: bool = False  # "none"/"random"/"" clears it (seed)


SPECS: dict[str, SettingSpec] = {
    s.name: s
    for s in (
        SettingSpec("temperature", float, 0.0, 5.0, "randomness; 0 means greedy (always the most likely token)"),
        SettingSpec("top_k", int, 0, 1_000_000, "keep only the k most likely tokens; 0 turns it off"),
        SettingSpec("top_p", float, 0.0, 1.0, "keep the smallest set of tokens whose probability reaches p; 1 turns it off"),
        SettingSpec("min_p", float, 0.0, 1.0, "drop tokens less likely than min_p times the top token; 0 turns it off"),
        SettingSpec("repetition_penalty", float, 0.01, 10.0, "divide the logits of recently seen tokens by this; 1 turns it off"),
        SettingSpec("repetition_window", int, 0, 1_000_000, "how many recent tokens the penalty looks at; 0 means all"),
        SettingSpec("max_new_tokens", int, 1, 1_000_000, "the longest reply, in tokens"),
        SettingSpec("seed", int, 0, 2**63 - 1, "random seed for sampling; 'random' picks a new one each reply", optional=True),
        SettingSpec("stop", list, None, None, "extra stop strings, separated by '|' (the template's own always apply)"),
    )
}


@dataclass
class SamplingSettings:
    # Defaults follow llama.cpp / Ollama: lively but coherent.
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repetition_penalty: float = 1.1
    repetition_window: int = 64
    max_new_tokens: int = 256
    seed: int | None = None
    stop: list[str] = field(default_factory=list)

    def set(self, name: str, value) -> None:
        """Validate and assign one setting; raise ValueError with a one-line reason otherwise."""
        name = name.strip().lower().replace("-", "_")
        spec = SPECS.get(name)
        if spec is None:
            close = difflib.get_close_matches(name, list(SPECS), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else f"; settings are: {', '.join(SPECS)}"
            raise ValueError(f"unknown setting {name!r}{hint}")
        setattr(self, name, parse_value(spec, value))

    def update(self, values: dict) -> None:
        """Set several values; all are checked before any is applied."""
        trial = self.copy()
        for name, value in values.items():
            trial.set(name, value)
        for f in fields(self):
            setattr(self, f.name, getattr(trial, f.name))

    def copy(self) -> "SamplingSettings":
        return replace(self, stop=list(self.stop))

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def describe(self, name: str) -> str:
        value = getattr(self, name)
        if name == "seed" and value is None:
            return "random"
        if name == "stop":
            return " | ".join(value) if value else "(none)"
        return f"{value:g}" if isinstance(value, float) else str(value)


def parse_value(spec: SettingSpec, value):
    """Turn user input (a string, or a number from a config file) into a checked value."""
    if spec.kind is list:
        if isinstance(value, (list, tuple)):
            items = [str(v) for v in value]
        else:
            items = str(value).split("|")
        items = [s.replace("\\n", "\n") for s in items if s.strip()]
        if any(len(s) > 200 for s in items):
            raise ValueError("stop: each stop string must be at most 200 characters")
        return items
    text = str(value).strip().lower() if not isinstance(value, (int, float)) or isinstance(value, bool) else value
    if spec.optional and text in ("none", "random", "", "off"):
        return None
    if isinstance(value, bool):
        raise ValueError(f"{spec.name}: expected a number, got {value!r}")
    try:
        number = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{spec.name}: {value!r} is not a number ({_range(spec)})") from None
    if not math.isfinite(number):
        raise ValueError(f"{spec.name}: {value!r} is not a finite number ({_range(spec)})")
    if spec.kind is int:
        if number != int(number):
            raise ValueError(f"{spec.name}: {value!r} is not a whole number ({_range(spec)})")
        number = int(number)
    if (spec.low is not None and number < spec.low) or (spec.high is not None and number > spec.high):
        raise ValueError(f"{spec.name}: {value!r} is out of range ({_range(spec)})")
    return number


def _range(spec: SettingSpec) -> str:
    if spec.kind is int:
        kind, low, high = "a whole number", f"{int(spec.low)}", f"{int(spec.high)}"
    else:
        kind, low, high = "a number", f"{spec.low:g}", f"{spec.high:g}"
    extra = " or 'random'" if spec.optional else ""
    return f"{kind} from {low} to {high}{extra}"
