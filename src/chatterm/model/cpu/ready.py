"""`ready(model)`: what a model's kernel layers get once before they compute, on the CPU: their
weights moved into huge pages (huge_pages.py) and each kernel family set to its fastest variant
for the model's shapes (kernel_choice.py).

Why once and early: the loader calls it as a model finishes loading, so that the first prompt's
products already run on the chosen variants and a large model's move (seconds for 8B weights)
is part of the load, not a pause after the reply's first token. The fused decode step calls it
too, for models built otherwise (`pack_linears`, a copy of a model); a model is readied once.
"""

from __future__ import annotations

import weakref

import torch

from . import huge_pages, kernel_choice

_ready: "weakref.WeakSet[torch.nn.Module]" = weakref.WeakSet()


def ready(model: torch.nn.Module) -> None:
    if model in _ready:
        return
    huge_pages.move_weights(model)
    kernel_choice.choose(model)  # measured once per CPU and shapes, then read from the cache
    _ready.add(model)
