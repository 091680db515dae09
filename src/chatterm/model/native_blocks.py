"""A block's decode step as one call into chatterm's CPU kernels (native/kernels.c): GPT-2 and
the Llama family.

Why: at one token per step a block is ~20 small tensor operations, each paying PyTorch's
dispatch, an allocation and a Python call: measured ~0.5 ms per block on GPT-2 small at one
thread, a fifth of an 8-bit decode step; SmolLM2-135M has 30 narrower blocks, where it is half
the step. `ct_gpt2_block_step` / `ct_llama_block_step` run the norms, the q/k/v projection
(rotary embedding for Llama), the cache write, attention, the output projection, the MLP and
both residuals in one call, on the same kernels the layers use one by one.

`gpt2_block_step(block, x, input_pos, cache)` (and `llama_block_step`, which also takes the
position's rotary rows) returns the block's output, or None where the
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
    """What one block's fused step needs: its four linears' descriptors and its norms' tensors."""

    def __init__(self, layers, norms) -> None:
        self.linears = (_Linear * 4)(*(_descriptor(layer) for layer in layers))
        self.norm_ptrs = [t.data_ptr() if t is not None else None for t in norms]
        self.key = _key(layers, norms)


def _key(layers, norms) -> tuple:
    """Changes when the block's tensors are replaced (a copy, a dtype change)."""
    return tuple(t.data_ptr() for t in (*(layer.weight for layer in layers), *norms) if t is not None)


def _plan(block, layers, norms) -> _Plan | None:
    """The block's plan, built on first use and after its tensors change; None when its linears
    are not all chatterm kernels or its norms are not fp32."""
    plan = _plans.get(block)
    if plan is not None and plan.key == _key(layers, norms):
        return plan
    if native.library() is None or not all(type(layer) in _KINDS for layer in layers):
        return None
    if not all(t is None or t.dtype == torch.float32 for t in norms):
        return None
    plan = _plans[block] = _Plan(layers, norms)
    return plan


def _one_token(x: torch.Tensor, cache, n_kv_head: int, training: bool) -> bool:
    """One token of one sequence in fp32, into a dynamic cache the kernels can read."""
    return (cache is not None and not cache.static and x.shape[:2] == (1, 1) and x.dtype == torch.float32
            and cache.keys.dtype in _CACHE_DTYPES and cache.keys.size(1) == 1 and cache.keys.size(2) == n_kv_head
            and not training)


def gpt2_block_step(block, x: torch.Tensor, input_pos: torch.Tensor, cache) -> torch.Tensor | None:
    """The GPT-2 block's output for one token (x: (1, 1, C) fp32), or None when the fused step
    does not apply here (see the module docstring)."""
    attn, mlp = block.attn, block.mlp
    if not _one_token(x, cache, attn.n_head, block.training) or block.ln_1.eps != block.ln_2.eps:
        return None
    plan = _plan(block, (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj),
                 (block.ln_1.weight, block.ln_1.bias, block.ln_2.weight, block.ln_2.bias))
    if plan is None or block.ln_1.weight is None:
        return None
    layer = attn.layer_idx
    start, _ = cache.reserve(layer, input_pos, 1)
    out = x.reshape(-1).clone()
    failed = native.library().ct_gpt2_block_step(
        plan.linears, *plan.norm_ptrs, block.ln_1.eps, out.data_ptr(), cache.keys[layer].data_ptr(),
        cache.values[layer].data_ptr(), start, cache.max_len, attn.n_head, attn.head_dim,
        _CACHE_DTYPES[cache.keys.dtype], torch.get_num_threads())
    if failed:
        raise MemoryError("the CPU decode kernel could not allocate its buffers")
    return out.view(1, 1, -1)


def llama_block_step(block, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, input_pos: torch.Tensor,
                     cache) -> torch.Tensor | None:
    """The Llama-family block's output for one token (x: (1, 1, C) fp32; cos, sin: this
    position's rotary rows), or None when the fused step does not apply here."""
    attn, mlp = block.attn, block.mlp
    if not _one_token(x, cache, attn.n_kv_head, block.training) or block.attn_norm.eps != block.mlp_norm.eps:
        return None
    if cos.dtype != torch.float32 or not (cos.is_contiguous() and sin.is_contiguous()) or cos.numel() != attn.head_dim:
        return None
    plan = _plan(block, (attn.qkv, attn.out, mlp.gate_up, mlp.down), (block.attn_norm.weight, block.mlp_norm.weight))
    if plan is None:
        return None
    layer = attn.layer_idx
    start, _ = cache.reserve(layer, input_pos, 1)
    out = x.reshape(-1).clone()
    failed = native.library().ct_llama_block_step(
        plan.linears, *plan.norm_ptrs, block.attn_norm.eps, cos.data_ptr(), sin.data_ptr(), out.data_ptr(),
        cache.keys[layer].data_ptr(), cache.values[layer].data_ptr(), start, cache.max_len, attn.n_head,
        attn.n_kv_head, attn.head_dim, _CACHE_DTYPES[cache.keys.dtype], torch.get_num_threads())
    if failed:
        raise MemoryError("the CPU decode kernel could not allocate its buffers")
    return out.view(1, 1, -1)
