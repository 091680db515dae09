"""Torch modules and checkpoint formats: the bottom layer, it knows nothing of text.

Importing this package does not import torch: the pieces load on first use, so the command line
and the config check (`model.device.check_device`) stay fast.
"""

from importlib import import_module

_LAZY = {
    "Checkpoint": ".checkpoint", "load_checkpoint": ".checkpoint", "save_checkpoint": ".checkpoint",
    "SHAPES": ".config", "GPTConfig": ".config", "shape": ".config",
    "pack_linears": ".cpu_linear",
    "pick_device": ".device", "pick_dtype": ".device", "pick_precision": ".device",
    "CheckpointError": ".errors",
    "GPT": ".gpt",
    "KVCache": ".kv_cache",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_LAZY)
