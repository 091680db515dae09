"""How much memory a model will take, checked before anything is allocated.

A config is a few bytes, and a hostile or mistaken one (10^9 layers, a context of millions of
tokens), or a real model too big for this machine (an 8B model widened to fp32 on a 16 GB
laptop), would otherwise read for minutes or die out of memory. Every format checks it as soon
as its config is known: GPT-2 formats in checkpoint.py, GGUF files and Llama-family folders
before their weights are read or dequantized. `check_fits(config, ...)` compares
the weights plus a full-context KV cache (batch 1) with the memory available on the device, and
refuses with both figures. Memory available: MemAvailable from /proc/meminfo (free pages where that
does not exist), or the free memory CUDA reports.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import CheckpointError


def weights_bytes(config, element_size: int, *, cpu: bool = False) -> int:
    """`config`: a GPTConfig or LlamaConfig (anything with num_params() and the shape fields)."""
    # On the CPU a tied output projection gets its own packed copy (see cpu_linear.py).
    extra = config.vocab_size * config.n_embd if cpu and config.tie_embeddings else 0
    return (config.num_params() + extra) * element_size


def kv_cache_bytes(config, element_size: int) -> int:
    """Keys and values for every layer over the whole context window, batch 1 (grouped-query
    attention keeps only `n_kv_head` heads)."""
    width = getattr(config, "n_kv_head", config.n_head) * config.head_dim
    return 2 * config.n_layer * config.block_size * width * element_size


def available_bytes(device: str = "cpu") -> int | None:
    """Memory free for a new allocation on `device`, or None when it cannot be told."""
    kind = str(device).split(":")[0]
    if kind == "cuda":
        import torch

        try:
            return int(torch.cuda.mem_get_info(torch.device(device))[0])
        except (RuntimeError, AssertionError):
            return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(config, element_size: int, device: str, where: Path, *, already_loaded: int = 0) -> None:
    """Raise CheckpointError when the model and its cache cannot fit. `already_loaded`: bytes of
    weights already in memory that the model will reuse (they are no longer "available")."""
    cpu = str(device).split(":")[0] == "cpu"
    weights = weights_bytes(config, element_size, cpu=cpu)
    cache = kv_cache_bytes(config, element_size)
    available = available_bytes(device)
    if available is None or weights + cache - already_loaded <= available:
        return
    raise CheckpointError(
        f"{where}: this model needs about {_size(weights + cache)} of memory ({_size(weights)} of weights "
        f"+ {_size(cache)} of KV cache for {config.block_size:,} tokens), and {_size(available + already_loaded)} "
        f"is available on {device}; its config ({config.n_layer:,} layers, width {config.n_embd:,}) may be wrong"
    )


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1024 or unit == "PB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} PB"
