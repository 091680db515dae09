"""Model families (torch modules), checkpoint formats, the loader that joins them, and the CPU
layers and kernels: the bottom layer, token ids in, logits out. What comes with a checkpoint
besides its weights (the tokenizer as a spec: its files or vocabulary, special and stop ids; the
chat template; recommended sampling values) is read into `Checkpoint.meta` as data, never built
or run here: tokenizers are the engine's, templates the session's.

Importing this package does not import torch: the pieces load on first use, so the command line
and the config check (`model.device.check_device`) stay fast.
"""

from importlib import import_module

_LAZY = {
    "Checkpoint": ".checkpoint", "load_checkpoint": ".checkpoint", "save_checkpoint": ".checkpoint",
    "SHAPES": ".families.gpt2", "GPTConfig": ".families.gpt2", "shape": ".families.gpt2",
    "pack_linears": ".cpu.linear",
    "pick_device": ".device", "pick_dtype": ".device", "pick_precision": ".device", "precision_name": ".device",
    "CheckpointError": ".errors",
    "GPT": ".families.gpt2",
    "KVCache": ".kv_cache",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_LAZY)
