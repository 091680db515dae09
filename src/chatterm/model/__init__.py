"""Torch modules and checkpoint formats: the bottom layer, it knows nothing of text."""

from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .config import SHAPES, GPTConfig, shape
from .cpu_linear import pack_linears
from .device import pick_device, pick_dtype, pick_precision
from .errors import CheckpointError
from .gpt import GPT
from .kv_cache import KVCache

__all__ = [
    "GPT", "GPTConfig", "SHAPES", "shape", "KVCache", "Checkpoint", "CheckpointError",
    "load_checkpoint", "save_checkpoint", "pick_device", "pick_dtype", "pick_precision", "pack_linears",
]
