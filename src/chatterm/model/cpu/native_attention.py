"""Attention of one new token over the KV cache, on chatterm's CPU kernel (native/kernels.c).

Why: at one query per head, `F.scaled_dot_product_attention`'s CPU kernel spends ~140 us per
layer setting up blocks and buffers for a few thousand multiply-adds (measured on GPT-2 small,
one thread: 1.7 ms of a 25 ms int8 decode step). `ct_attend_one` is the plain computation:
scores, softmax, weighted sum, reading the cache where it lies (strided views, grouped-query
heads mapped to their key/value head without copies).

`attend_one(q, keys, values)` returns None wherever the kernel does not apply (no library, not
fp32 on the CPU, more than one query, an unexpected layout); the caller then runs SDPA.
"""

from __future__ import annotations

import torch

from . import native

_CACHE_DTYPES = {torch.float32: 0, torch.float16: 1}  # the kernel's `half` flag


def attend_one(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor | None:
    """q (1, n_head, 1, hs) fp32; keys, values (1, n_kv_head, S, hs), fp32 or fp16, with the same strides -> the
    attention output (1, 1, n_head * hs), or None when the kernel does not apply."""
    lib = native.library()
    if lib is None or q.dtype != torch.float32 or keys.dtype not in _CACHE_DTYPES or q.device.type != "cpu":
        return None
    _, n_head, t, hs = q.shape
    _, n_kv_head, length, _ = keys.shape
    if (t != 1 or q.size(0) != 1 or keys.size(0) != 1 or n_head % n_kv_head or q.stride(3) != 1
            or keys.stride(3) != 1 or keys.stride() != values.stride() or values.dtype != keys.dtype or length == 0):
        return None
    out = torch.empty(1, 1, n_head * hs)
    failed = lib.ct_attend_one(q.data_ptr(), q.stride(1), keys.data_ptr(), values.data_ptr(), keys.stride(1),
                               keys.stride(2), out.data_ptr(), n_head, n_kv_head, length, hs, hs ** -0.5,
                               _CACHE_DTYPES[keys.dtype], torch.get_num_threads())
    if failed:
        raise MemoryError("the attention kernel could not allocate its scores")
    return out
