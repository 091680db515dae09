"""A model's kernel weights moved into 2 MB pages (Linux transparent huge pages, on request).

Why: a decode step reads every weight once, front to back. In 4 KB pages SmolLM2's 134 MB of
int8 weights are 33k pages, far more than the TLB covers, so the stream stops for a page walk
every 4 KB; in 2 MB pages it is 67. Measured on the 2-core Xeon (one thread, CPU time, SmolLM2
Q8_0, alternating runs): a decode step 13.4 / 13.5 ms as loaded, 10.7 / 9.9 ms moved here (the
step was the linears alone, reading at ~10 GB/s where the same products in L2 ran at 25-40).
PyTorch's allocator asks for huge pages only with THP_MEM_ALLOC_ENABLE=1, and then for every
large tensor (the KV cache too, whose untouched positions would be resident 2 MB at a time), and
most of a small model's layers are under 2 MB each anyway: so the weights are moved, here, into
one block of fresh memory aligned to 2 MB and marked MADV_HUGEPAGE before it is written.

`move_weights(model)` does it for every kernel layer's buffers, where the kernel offers
transparent huge pages (`/sys/kernel/mm/transparent_hugepage/enabled` not "never"); elsewhere
nothing changes. Each buffer is copied and its old memory freed in turn, so the peak is the
model plus its largest buffer; where the system has not that much to spare, nothing moves.
"""

from __future__ import annotations

import ctypes
import platform

import torch

from ..memory import available_bytes
from .linear import return_freed_memory
from .native_linear import NativeLinear

HUGE_PAGE = 2 << 20
_ALIGN = 64  # each buffer starts on a cache line
# Freed memory handed back every this many bytes moved: the peak stays near the model's size
# (measured, SmolLM2 Q4_1 file: peak 431 MB without the move; with it 494 MB trimming once at the end,
# 458 MB every 16 MB: the model plus its largest buffer, the 28 MB output layer)
TRIM_EVERY = 16 << 20
_MADV_HUGEPAGE = 14  # linux/mman.h
_available: list[bool] = []


def available() -> bool:
    """Whether this system gives transparent huge pages to memory that asks for them."""
    if not _available:
        try:
            with open("/sys/kernel/mm/transparent_hugepage/enabled", encoding="ascii") as f:
                setting = f.read()
            _available.append(platform.system() == "Linux" and "[never]" not in setting)
        except OSError:
            _available.append(False)
    return _available[0]


def huge_page_arena(nbytes: int) -> torch.Tensor | None:
    """`nbytes` of fresh uint8 memory aligned to 2 MB and marked for huge pages, or None where
    huge pages are not offered or the kernel refuses."""
    if nbytes < HUGE_PAGE or not available():
        return None
    raw = torch.empty(nbytes + HUGE_PAGE, dtype=torch.uint8)  # large: fresh, untouched pages
    start = (-raw.data_ptr()) % HUGE_PAGE
    region = raw[start:start + nbytes]
    if ctypes.CDLL(None).madvise(ctypes.c_void_p(region.data_ptr()), ctypes.c_size_t(nbytes), _MADV_HUGEPAGE):
        return None
    return region


def move_weights(model: torch.nn.Module) -> int:
    """Move every kernel layer's buffers into one huge-page arena, one after another in the
    order of the model's modules (a decode step's order: its weights one stream); return how
    many bytes moved (0 where huge pages are not offered)."""
    entries = [(layer, name) for layer in model.modules() if isinstance(layer, NativeLinear)
               for name, t in layer._buffers.items() if t is not None and t.is_contiguous()]
    sizes = [-(-_nbytes(layer._buffers[name]) // _ALIGN) * _ALIGN for layer, name in entries]
    room = available_bytes()
    if room is not None and room < 2 * max(sizes, default=0) + 4 * TRIM_EVERY:
        return 0  # the copy's overlap could run a model that only just fits out of memory
    with torch.inference_mode(False):  # perhaps called from a decode step: the arena must be a normal tensor
        arena = huge_page_arena(sum(sizes))
        if arena is None:
            return 0
        offset = trimmed = 0
        for (layer, name), size in zip(entries, sizes):
            old = layer._buffers[name]
            moved = arena[offset:offset + _nbytes(old)].view(old.dtype).view(old.shape)
            moved.copy_(old)
            layer._buffers[name] = moved  # `old` freed below, unless something else holds it
            del old
            offset += size
            if offset - trimmed >= TRIM_EVERY:  # glibc keeps freed heap pages until asked
                return_freed_memory()
                trimmed = offset
    return_freed_memory()
    return offset


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()
