"""Tokenizer, sampling, KV-cached generation and stop strings: token ids in, events out.

Importing this package is cheap: the torch-based pieces load on first use, so a front end can
draw its first frame before torch is imported.
"""

from importlib import import_module

from .events import ContextTrimmed, Event, Finished, TextDelta, TokenStep, run_to_end
from .settings import SPECS, SamplingSettings

_LAZY = {
    "Generator": ".generator",
    "TokenLoop": ".generator",
    "Tokenizer": ".tokenizer",
    "StreamingDetokenizer": ".detokenizer",
    "StopStringMatcher": ".stop",
    "sample": ".sampling",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ContextTrimmed", "Event", "Finished", "TextDelta", "TokenStep", "run_to_end", "SPECS", "SamplingSettings",
    *_LAZY,
]
