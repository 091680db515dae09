"""A GPT-2 block's decode step as one call into chatterm's CPU kernels (native/kernels.c).

Why: at one token per step a block is ~20 small tensor operations, each paying PyTorch's
dispatch, an allocation and a Python call: measured ~0.5 ms per block on GPT-2 small at one
thread, a fifth of an 8-bit decode step. `ct_gpt2_block_step` runs LayerNorm, the q/k/v
projection, the cache write, attention, the output projection, LayerNorm, the MLP and both
residuals in one call, on the same kernels the layers use one by one.

`gpt2_block_step(block, x, input_pos, cache)` returns the block's output, or None where the
fused step does not apply (its four linears are not all chatterm kernels, not fp32, more than
one token or sequence, a static cache); the block then runs its PyTorch code. The pointers to
the block's tensors are gathered once, kept beside the block (a copy starts without them), and
checked on every call against the block's current tensors (a converted block gets new ones).
"""

from __future__ import annotations

import ctypes
import weakref

import torch

from . import native
from .native_attention import _CACHE_DTYPES
from .native_linear import Bf16Linear, Q4Linear, Q8Linear

_KINDS = {Bf16Linear: 0, Q8Linear: 1, Q4Linear: 2}
# block -> its _Plan. Beside the block, not on it: a copied block (deepcopy) starts without one,
# and the raw pointers never travel into pickles or copies.
_plans: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class _Linear(ctypes.Structure):  # kernels.c's ct_lin
    _fields_ = [("kind", ctypes.c_int64), ("N", ctypes.c_int64), ("K", ctypes.c_int64), ("w", ctypes.c_void_p),
                ("scale", ctypes.c_void_p), ("offset", ctypes.c_void_p), ("bias", ctypes.c_void_p)]


def _descriptor(layer) -> _Linear:
    def ptr(name):
        t = getattr(layer, name, None)
        return t.data_ptr() if t is not None else None

    return _Linear(_KINDS[type(layer)], layer.out_features, layer.in_features, ptr("weight"), ptr("scale"),
                   ptr("offset"), ptr("bias"))


class _Plan:
    """What one block's fused step needs: the four linears' descriptors and the norms' pointers."""

    def __init__(self, block) -> None:
        attn, mlp = block.attn, block.mlp
        self.layers = (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj)
        self.linears = (_Linear * 4)(*(_descriptor(layer) for layer in self.layers))
        self.norms = (block.ln_1.weight, block.ln_1.bias, block.ln_2.weight, block.ln_2.bias)
        self.norm_ptrs = [t.data_ptr() if t is not None else None for t in self.norms]
        self.key = self._key(block)
        self.eps = block.ln_1.eps
        self.n_head, self.head_dim = attn.n_head, attn.head_dim

    @staticmethod
    def _key(block) -> tuple:
        """Changes when the block's tensors are replaced (a copy, a dtype change)."""
        attn, mlp = block.attn, block.mlp
        return (attn.c_attn.weight.data_ptr(), attn.c_proj.weight.data_ptr(), mlp.c_fc.weight.data_ptr(),
                mlp.c_proj.weight.data_ptr(), block.ln_1.weight.data_ptr(), block.ln_2.weight.data_ptr())


def _applies(block) -> bool:
    layers = (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj)
    norms = (block.ln_1, block.ln_2)
    return (native.library() is not None and all(type(layer) in _KINDS for layer in layers)
            and all(n.weight is not None and n.weight.dtype == torch.float32 for n in norms)
            and block.ln_1.eps == block.ln_2.eps and block.mlp.c_proj.in_features == block.mlp.c_fc.out_features)


def gpt2_block_step(block, x: torch.Tensor, input_pos: torch.Tensor, cache) -> torch.Tensor | None:
    """The block's output for one token (x: (1, 1, C) fp32), or None when the fused step does
    not apply here (see the module docstring)."""
    if cache is None or cache.static or x.shape[:2] != (1, 1) or x.dtype != torch.float32:
        return None
    if cache.keys.dtype not in _CACHE_DTYPES or cache.keys.size(1) != 1 or cache.keys.size(2) != block.attn.n_head:
        return None
    if block.training:
        return None
    plan = _plans.get(block)
    if plan is None or plan.key != _Plan._key(block):
        if not _applies(block):
            return None
        plan = _plans[block] = _Plan(block)
    layer = block.attn.layer_idx
    start, _ = cache.reserve(layer, input_pos, 1)
    out = x.reshape(-1).clone()
    keys, values = cache.keys[layer], cache.values[layer]  # (1, heads, max_len, hs), contiguous
    failed = native.library().ct_gpt2_block_step(
        plan.linears, *plan.norm_ptrs, plan.eps, out.data_ptr(), keys.data_ptr(), values.data_ptr(),
        start, cache.max_len, plan.n_head, plan.head_dim, _CACHE_DTYPES[cache.keys.dtype], torch.get_num_threads())
    if failed:
        raise MemoryError("the CPU decode kernel could not allocate its buffers")
    return out.view(1, 1, -1)
