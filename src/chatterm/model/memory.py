"""How much memory a model will take, checked before anything is allocated.

A config is a few bytes, and a hostile or mistaken one (10^9 layers, a context of millions of
tokens), or a real model too big for this machine, would otherwise read for minutes or die out
of memory. checkpoint.py checks it before any weight is read (where the format allows): the
weights as they will really be held (stored bytes for tensors kept as stored, loader.stored_bytes)
plus the KV cache of the whole window in the dtype it will really have, plus working buffers,
against the memory available: MemAvailable from /proc/meminfo (free pages where that does not
exist), capped by a cgroup's memory limit, or the free memory CUDA reports. A refusal is one
line with the figures, and says what to change: a smaller --context when the cache is the
problem, a smaller quantization or a server when the weights are.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import CheckpointError


def kv_cache_bytes(config, element_size: int, context: int | None = None) -> int:
    """Keys and values for every layer over the whole context window (capped by `context`),
    batch 1 (grouped-query attention keeps only `n_kv_head` heads)."""
    width = getattr(config, "n_kv_head", config.n_head) * config.head_dim
    positions = min(config.block_size, context) if context else config.block_size
    return 2 * config.n_layer * positions * width * element_size


def working_bytes(config) -> int:
    """Activations and logits of a prompt chunk, the kernels' buffers: small next to the
    weights, but not nothing for a 128k vocabulary (a 512-token prompt's hidden states, the
    last position's logits, the MLP's intermediate)."""
    buffers = 64 * 1024 * 1024 + 512 * 4 * (4 * config.n_embd + 2 * getattr(config, "intermediate_size", 4 * config.n_embd))
    rotary = 2 * config.block_size * config.head_dim * 4 if hasattr(config, "rope_theta") else 0  # cos and sin tables
    return buffers + rotary


def available_bytes(device: str = "cpu") -> int | None:
    """Memory free for a new allocation on `device`, or None when it cannot be told."""
    kind = str(device).split(":")[0]
    if kind == "cuda":
        import torch

        try:
            return int(torch.cuda.mem_get_info(torch.device(device))[0])
        except (RuntimeError, AssertionError):
            return None
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if free is None:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    limit = _cgroup_room()
    return free if limit is None else min(free, limit)


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup (v2) memory limit, or None without one: a
    container's limit is not in /proc/meminfo, and going past it is a kill, not an error."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                folder = Path("/sys/fs/cgroup") / line[3:].strip().lstrip("/")
                limit = (folder / "memory.max").read_text().strip()
                if limit == "max":
                    return None
                return max(0, int(limit) - int((folder / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return None


def check_fits(config, weights: int, cache_element_size: int, device, where: Path, *,
               already_loaded: int = 0, context: int | None = None) -> None:
    """Raise CheckpointError when the weights (`weights` bytes, as they will be held), the KV
    cache and working buffers cannot fit. `already_loaded`: bytes of weights already in memory
    that the model will reuse (they are no longer "available")."""
    cache = kv_cache_bytes(config, cache_element_size, context)
    need = weights + cache + working_bytes(config)
    available = available_bytes(str(device))
    if available is None or need - already_loaded <= available:
        return
    have = available + already_loaded
    if weights <= have and cache > weights:  # the window, not the model, is too big
        advice = f"a smaller --context (now {min(config.block_size, context or config.block_size):,} tokens) fits"
    else:
        advice = "a smaller quantization of it may fit, or a server with more memory (chatterm URL)"
    raise CheckpointError(
        f"{where}: this model needs about {_size(need)} of memory ({_size(weights)} of weights + {_size(cache)} "
        f"of KV cache for {min(config.block_size, context or config.block_size):,} tokens), and {_size(have)} "
        f"is available on {device}; {advice}"
    )


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1024 or unit == "PB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} PB"
