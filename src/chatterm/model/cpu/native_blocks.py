"""A decode step as one call into chatterm's CPU kernels (native/kernels.c), for GPT-2 and the
Llama family (Llama, Qwen2/3, SmolLM2/3, Phi-3/4-mini, Gemma 3).

Why: at one token per step a block is ~20 small tensor operations, each paying PyTorch's
dispatch, an allocation and a Python call: measured ~0.5 ms per block on GPT-2 small at one
thread, a fifth of an 8-bit decode step, and on SmolLM2-135M's 30 narrow blocks a third of it
even once each block was one call. `ct_gpt2_layers_step` / `ct_llama_layers_step` run every
block (norms, q/k/v, rotary embedding for Llama, the cache write, attention, the output
projection, the MLP, both residuals) in one call and one OpenMP parallel region, on the same
kernels the layers use one by one. What a Llama-family member does differently its modules
declare (llama_decode_step's docstring), and the plan hands it to the C code.

Two ways in:
- `gpt2_decode_token(model, token_id, position, cache)` / `llama_decode_token`: from Python
  ints (the generator's way, `Model.decode_token`): the token's embedding row (from the tied head
  or any packed table), GPT-2's position row and the rotary rows are read by the kernels, the
  final norm and the head run in the same call, and the next-token logits come back. After a
  step has streamed every weight the few PyTorch operations around it ran on cold caches (a
  576-wide RMSNorm took ~110 us, not 8; the id tensors, the lookups and the copies ~0.3 ms of a
  5 ms SmolLM2 step). None where this does not apply (an embedding the kernels cannot read, a
  head that is not one of their layers, logit soft-capping): the caller runs forward().
- `gpt2_decode_step(model, x, input_pos, cache)` / `llama_decode_step`: forward()'s, with the
  embedded token: (logits, True) where the head ran too, (the residual stream after the last
  block, False) where only the blocks could, or None where the fused step does not apply (a
  linear that is not one of chatterm's kernels, norms not fp32, more than one token or sequence,
  a static cache): the model then runs its blocks in PyTorch.

A model the loader did not ready (ready.py: its weights into 2 MB pages, each kernel family on
the variant measured fastest for its shapes) is readied at its first fused step.

The pointers are gathered once per (model, cache) and kept beside the model, not on it (a
deepcopy starts without them); the plan also holds every tensor it points into, so nothing it
reads can be freed under it. Packed models are for inference only (cpu_linear.py): changing a
block's tensors after the first decode step is not seen here.
"""

from __future__ import annotations

import ctypes
import weakref
from typing import Callable, NamedTuple

import torch

from . import native
from .linear import TiedEmbedding
from .native_attention import _CACHE_DTYPES
from .native_linear import (Bf16Linear, F16Linear, IQ4NLLinear, IQ4XSLinear, Q2KLinear, Q3KLinear, Q4KLinear, Q4Linear,
                            Q5KLinear, Q6KLinear, Q8Linear, StackedLinear)
from .ready import ready

# kernels.c's ct_lin kinds; a K-quant's (or IQ4_XS's) is 4 + its kquants.c type code
_KINDS = {Bf16Linear: 0, Q8Linear: 1, Q4Linear: 2, F16Linear: 3,
          **{kind: 4 + kind.TYPE for kind in (Q4KLinear, Q5KLinear, Q6KLinear, Q2KLinear, Q3KLinear, IQ4XSLinear)},
          IQ4NLLinear: 10}  # 4 + CT_KQ_LAST + 1 in kernels.c's lin_apply
_STACKED = 11  # kernels.c's CT_STACKED: parts of the kinds above, one after another
_plans: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> _Plan (or _NOT_HERE)
_NOT_HERE = object()
_last = None  # (model, cache, plan) of the last step by token id, as weak references


class _Linear(ctypes.Structure):  # kernels.c's ct_lin
    _fields_ = [("kind", ctypes.c_int64), ("N", ctypes.c_int64), ("K", ctypes.c_int64), ("w", ctypes.c_void_p),
                ("scale", ctypes.c_void_p), ("offset", ctypes.c_void_p), ("bias", ctypes.c_void_p),
                ("parts", ctypes.c_int64)]


class _Head(ctypes.Structure):  # kernels.c's ct_head
    _fields_ = [("is_layer_norm", ctypes.c_int64), ("norm_w", ctypes.c_void_p), ("norm_b", ctypes.c_void_p),
                ("eps", ctypes.c_double), ("head", ctypes.POINTER(_Linear)), ("logits", ctypes.c_void_p)]


class _Input(ctypes.Structure):  # kernels.c's ct_input
    _fields_ = [("token", ctypes.c_int64), ("table", ctypes.POINTER(_Linear)), ("position_row", ctypes.c_void_p),
                ("positions", ctypes.POINTER(_Linear)), ("position", ctypes.c_int64), ("scale", ctypes.c_double)]


class _LlamaOpts(ctypes.Structure):  # kernels.c's ct_llama_opts
    _fields_ = [("cos_local", ctypes.c_void_p), ("sin_local", ctypes.c_void_p), ("attn_scale", ctypes.c_double),
                ("gelu", ctypes.c_int64)]


class _Layer(ctypes.Structure):  # kernels.c's ct_layer
    _fields_ = [("lins", _Linear * 4), ("norm", ctypes.c_void_p * 6), ("kc", ctypes.c_void_p),
                ("vc", ctypes.c_void_p), ("rotary_dims", ctypes.c_int64), ("window", ctypes.c_int64)]


class _Form(NamedTuple):
    """How a family's block looks to kernels.c: its four linears, its norm tensors (None where
    absent), whether the widths are the ones kernels.c assumes, each head's rotated dims, the
    positions a query sees (0: all)."""
    linears: Callable
    norms: Callable
    shapes_fit: Callable
    rotary_dims: Callable
    window: Callable
    shared: Callable  # what every block must have alike: (attention scale, the MLP's gate) for the Llama family


def _pointer(t: torch.Tensor | None):
    return t.data_ptr() if t is not None else None


def _descriptor(layer, held: list) -> _Linear:
    """kernels.c's view of `layer`; a stacked layer's array of parts goes into `held`, kept
    as long as the plan."""
    if isinstance(layer, StackedLinear):
        parts = (_Linear * len(layer.parts))(*(_descriptor(part, held) for part in layer.parts))
        held.append(parts)
        return _Linear(_STACKED, layer.out_features, layer.in_features, ctypes.addressof(parts), None, None, None,
                       len(layer.parts))
    return _Linear(_KINDS[type(layer)], layer.out_features, layer.in_features, _pointer(layer.weight),
                   _pointer(getattr(layer, "scale", None)), _pointer(getattr(layer, "offset", None)),
                   _pointer(layer.bias), 0)


def _has_kernel(layer) -> bool:
    if isinstance(layer, StackedLinear):
        return all(type(part) in _KINDS for part in layer.parts)
    return type(layer) in _KINDS


class _Plan:
    """Every block's linears, norms and cache buffers, as kernels.c reads them, and the final
    norm and vocabulary projection where the kernels can run them too (`head`, else None)."""

    def __init__(self, blocks, form: _Form, cache, final) -> None:
        self.keys = cache.keys  # the cache these pointers are into
        self.tensors = [cache.keys, cache.values]  # held: nothing pointed at is freed meanwhile
        layers = []
        for i, block in enumerate(blocks):
            linears, norms = form.linears(block), form.norms(block)
            self.tensors += [*linears, *norms]
            layers.append(_Layer((_Linear * 4)(*(_descriptor(layer, self.tensors) for layer in linears)),
                                 (ctypes.c_void_p * 6)(*(_pointer(t) for t in norms), *[None] * (6 - len(norms))),
                                 cache.keys[i].data_ptr(), cache.values[i].data_ptr(), form.rotary_dims(block),
                                 form.window(block)))
        self.rotary_width = max((form.rotary_dims(b) for b in blocks), default=0)  # the cos/sin rows' width
        shared = form.shared(blocks[0])
        self.layers = (_Layer * len(layers))(*layers)
        self.n_layer = len(layers)
        self.head = self.head_arg = self.vocab = None  # head_arg: what the kernel call takes
        # The input by token id (decode_token): the token embedding's rows, where they are a
        # kernel layer's (a tied model's head, or a packed table of its own)
        self.input = _Input(-1, None, None, None, 0, 0.0)
        self.opts = _LlamaOpts(None, None, *shared) if shared else None  # the Llama family's (rows: set each step)
        self.opts_arg = ctypes.byref(self.opts) if shared else None
        self.input_arg = ctypes.byref(self.input)
        self.x = None  # the residual stream's buffer there; None: no step by token id
        self.embed_rows = 0  # the token ids it takes
        self.token_args = None  # what a step by token id reads of the model, gathered at the first one
        if final is not None:
            norm, head, is_layer_norm, embedding = final
            bias = getattr(norm, "bias", None)
            self.tensors += [norm.weight, bias, head]
            linear = _descriptor(head, self.tensors)
            self.tensors.append(linear)
            self.head = _Head(is_layer_norm, _pointer(norm.weight), _pointer(bias), norm.eps, ctypes.pointer(linear),
                              None)
            self.head_arg = ctypes.byref(self.head)
            self.vocab = head.out_features
            if (isinstance(embedding, TiedEmbedding) and type(embedding.table) in _KINDS  # (a stacked layer has no rows)
                    and embedding.dtype == torch.float32 and embedding.embedding_dim == head.in_features):
                table = linear if embedding.table is head else _descriptor(embedding.table, self.tensors)
                self.tensors += [embedding, table]
                self.input.table = ctypes.pointer(table)
                self.x = torch.empty(head.in_features)
                self.embed_rows = embedding.num_embeddings

    def logits_into(self) -> torch.Tensor | None:
        """A new logits buffer the next call writes (None: the call stops at the residual stream)."""
        if self.head is None:
            return None
        logits = torch.empty(self.vocab)
        self.head.logits = logits.data_ptr()
        return logits


def _final(norm, head, embedding, width: int, is_layer_norm: bool):
    """(norm, head, is_layer_norm, embedding) where the kernels can run the model's final norm
    (LayerNorm, or RMSNorm: `norm.weight`, `norm.eps`, perhaps `norm.bias`) and its vocabulary
    projection: fp32 norm tensors and a kernel linear without bias reading the residual stream.
    Else None. embedding: the token embedding module (the plan sees whether the kernels can read it)."""
    tensors = (norm.weight, getattr(norm, "bias", None))
    fits = (norm.weight is not None and all(t is None or (t.dtype == torch.float32 and t.numel() == width)
                                            for t in tensors)
            and _has_kernel(head) and head.in_features == width and getattr(head, "bias", None) is None)
    return (norm, head, is_layer_norm, embedding) if fits else None


def _plan(model, blocks, form: _Form, cache, final_of) -> _Plan | None:
    plan = _plans.get(model)
    if plan is _NOT_HERE:
        return None
    if plan is not None and plan.keys is cache.keys:
        return plan
    rotary = {form.rotary_dims(b) for b in blocks} - {0}  # one width of cos/sin rows for every layer
    alike = len({form.shared(b) for b in blocks}) == 1
    applies = native.library() is not None and len(rotary) <= 1 and alike and all(
        all(_has_kernel(layer) for layer in form.linears(b)) and form.shapes_fit(b)
        and all(t is None or t.dtype == torch.float32 for t in form.norms(b)) for b in blocks)
    if not applies:
        _plans[model] = _NOT_HERE
        return None
    if plan is None:  # a model the loader did not ready: its weights into huge pages, its variants chosen
        ready(model)
    plan = _plans[model] = _Plan(blocks, form, cache, final_of())
    return plan


def _cache_fits(cache, n_kv_head: int, training: bool) -> bool:
    """A dynamic cache of one sequence the kernels can read, and a model not training."""
    return (cache is not None and not cache.static and cache.keys.dtype in _CACHE_DTYPES
            and cache.keys.size(1) == 1 and cache.keys.size(2) == n_kv_head and not training)


def _gpt2_linears(block):
    return (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj)


def _gpt2_norms(block):
    return (block.ln_1.weight, block.ln_1.bias, block.ln_2.weight, block.ln_2.bias)


def _gpt2_shapes_fit(block) -> bool:
    """The widths kernels.c assumes (it writes buffers of these sizes): checked once per plan."""
    qkv, proj, fc, fc_proj = _gpt2_linears(block)
    c = block.attn.n_head * block.attn.head_dim
    return (qkv.in_features == c and qkv.out_features == 3 * c and (proj.in_features, proj.out_features) == (c, c)
            and fc.in_features == c and fc_proj.in_features == fc.out_features and fc_proj.out_features == c
            and all(t is not None and t.numel() == c for t in _gpt2_norms(block)[::2]))


_GPT2 = _Form(_gpt2_linears, _gpt2_norms, _gpt2_shapes_fit, lambda block: 0, lambda block: 0, lambda block: ())


def _gpt2_plan(model, cache) -> _Plan | None:
    blocks = model.transformer.h
    first = blocks[0]
    if not _cache_fits(cache, first.attn.n_head, model.training) or first.ln_1.weight is None:
        return None
    return _plan(model, blocks, _GPT2, cache, lambda: _final(
        model.transformer.ln_f, model.lm_head, model.transformer.wte, first.attn.c_attn.in_features, True))


def gpt2_decode_step(model, x: torch.Tensor, input_pos: torch.Tensor, cache) -> tuple[torch.Tensor, bool] | None:
    """GPT-2's decode step for one token (x: (1, 1, C) fp32): (logits (1, 1, vocab), True) when
    the kernels also ran the final LayerNorm and the head, (the residual stream after the last
    block, False) when only the blocks; None when the fused step does not apply (module docstring)."""
    plan = _gpt2_plan(model, cache) if x.shape[:2] == (1, 1) and x.dtype == torch.float32 else None
    if plan is None:
        return None
    first = model.transformer.h[0]
    return _run(x, input_pos, cache, plan, lambda out, start, half, threads: native.library().ct_gpt2_layers_step(
        plan.layers, plan.n_layer, first.ln_1.eps, out, start, cache.max_len, first.attn.n_head,
        first.attn.head_dim, half, None, plan.head_arg, threads))


def gpt2_decode_token(model, token_id: int, position: int, cache) -> torch.Tensor | None:
    """Next-token logits (vocab,) after `token_id` at `position`, from Python ints: the token's
    and the position's embedding rows read by the kernels in the same call (see _run_token).
    None where that does not apply; the caller then runs forward()."""
    plan = _token_plan(model, cache, _gpt2_plan)
    if plan is None or plan.x is None or not 0 <= token_id < plan.embed_rows:
        return None
    if plan.token_args is None or plan.token_args[0] is not model.transformer.wpe:
        plan.token_args = _position_table(plan, model.transformer.wpe, model.transformer.h[0])
    _, rows, wpe, (eps, n_head, head_dim) = plan.token_args
    if not 0 <= position < rows:
        return None
    if wpe is not None:  # an fp32 table: this row's address; else the kernels read row `position`
        plan.input.position_row = wpe.data_ptr() + position * wpe.stride(0) * 4
    plan.input.position = position
    return _run_token(plan, token_id, position, cache,
                      lambda out, start, half, threads: native.library().ct_gpt2_layers_step(
                          plan.layers, plan.n_layer, eps, out, start, cache.max_len, n_head, head_dim, half,
                          plan.input_arg, plan.head_arg, threads))


def _position_table(plan: _Plan, module, first) -> tuple:
    """(module, the positions the kernels can read of it: 0 if none, an fp32 weight or None, the
    step's constants). A packed table (TiedEmbedding of a kernel layer) is read by row index."""
    constants = (first.ln_1.eps, first.attn.n_head, first.attn.head_dim)
    plan.input.positions, plan.input.position_row = None, None
    if isinstance(module, torch.nn.Embedding):
        wpe = module.weight
        usable = wpe.dtype == torch.float32 and wpe.dim() == 2 and wpe.is_contiguous()
        return module, wpe.size(0) if usable else 0, wpe, constants
    if isinstance(module, TiedEmbedding) and type(module.table) in _KINDS and module.dtype == torch.float32:
        linear = _descriptor(module.table, plan.tensors)
        plan.tensors += [module, linear]
        plan.input.positions = ctypes.pointer(linear)
        return module, module.num_embeddings, None, constants
    return module, 0, None, constants


def _llama_linears(block):
    return (block.attn.qkv, block.attn.out, block.mlp.gate_up, block.mlp.down)


def _llama_norms(block):
    """The two RMSNorms' weights, the q and k norms' (Qwen3, Gemma 3), the norms of the attention's
    and the MLP's outputs (Gemma 3); None where absent."""
    qk, post = block.attn.qk_norms(), block.post_norms()
    return (block.attn_norm.weight, block.mlp_norm.weight, *((qk[0].weight, qk[1].weight) if qk else (None, None)),
            *((post[0].weight, post[1].weight) if post else (None, None)))


def _llama_shapes_fit(block) -> bool:
    """The widths kernels.c assumes (it writes buffers of these sizes), one epsilon for every
    RMSNorm, a gate it has: checked once per plan."""
    qkv, out, gate_up, down = _llama_linears(block)
    attn, c = block.attn, qkv.in_features
    q, kv = attn.n_head * attn.head_dim, attn.n_kv_head * attn.head_dim
    qk, post = attn.qk_norms() or (), block.post_norms() or ()
    return (qkv.out_features == q + 2 * kv and (out.in_features, out.out_features) == (q, c)
            and gate_up.in_features == c and gate_up.out_features == 2 * down.in_features and down.out_features == c
            and attn.rotary_dims % 2 == 0 and 0 <= attn.rotary_dims <= attn.head_dim and attn.window >= 0
            and block.mlp.gate in _GATES
            and all(n.weight.numel() == c for n in (block.attn_norm, block.mlp_norm, *post))
            and all(n.weight.numel() == attn.head_dim for n in qk)
            and all(n.eps == block.attn_norm.eps for n in (block.mlp_norm, *qk, *post)))


_GATES = {"silu": 0, "gelu_tanh": 1}  # the MLP's gate -> kernels.c's ct_llama_opts.gelu
_LLAMA = _Form(_llama_linears, _llama_norms, _llama_shapes_fit, lambda block: block.attn.rotary_dims,
               lambda block: block.attn.window, lambda block: (block.attn.scale, _GATES.get(block.mlp.gate)))


def _llama_plan(model, cache) -> _Plan | None:
    blocks = model.layers
    if not _cache_fits(cache, blocks[0].attn.n_kv_head, model.training):
        return None
    return _plan(model, blocks, _LLAMA, cache, lambda: None if model.logit_softcap else _final(
        model.norm, model.lm_head, model.embed_tokens, blocks[0].attn.qkv.in_features, False))


def llama_decode_step(model, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, input_pos: torch.Tensor,
                      cache, local: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, bool] | None:
    """A Llama-family model's decode step for one token (x: (1, 1, C) fp32; cos, sin: this
    position's rotary rows; `local`: the local layers' (Gemma 3)): as gpt2_decode_step, with the
    final RMSNorm. What a member does differently its modules declare: the attention's
    `qk_norms()` (Qwen3, Gemma 3), `rotary_dims` (SmolLM3's layers without rotation, Phi-4-mini's
    partial rotation), `window` and `scale` (Gemma 3), the block's `post_norms()` and the MLP's
    `gate` (Gemma 3), the model's `embed_scale`, `logit_softcap` and `rotary_tables()`."""
    plan = _llama_plan(model, cache) if x.shape[:2] == (1, 1) and x.dtype == torch.float32 else None
    rows = (cos, sin, *(local or ()))
    if plan is None or not all(t.dtype == torch.float32 and t.is_contiguous() for t in rows):
        return None
    if plan.rotary_width and any(t.numel() != plan.rotary_width for t in rows):
        return None
    plan.opts.cos_local, plan.opts.sin_local = (local[0].data_ptr(), local[1].data_ptr()) if local else (None, None)
    attn = model.layers[0].attn
    return _run(x, input_pos, cache, plan, lambda out, start, half, threads: native.library().ct_llama_layers_step(
        plan.layers, plan.n_layer, model.layers[0].attn_norm.eps, cos.data_ptr(), sin.data_ptr(), out, start,
        cache.max_len, attn.n_head, attn.n_kv_head, attn.head_dim, half, plan.opts_arg, None, plan.head_arg,
        threads))


def llama_decode_token(model, token_id: int, position: int, cache) -> torch.Tensor | None:
    """As gpt2_decode_token, for the Llama family: this position's rotary rows are found in the
    model's tables by address."""
    plan = _token_plan(model, cache, _llama_plan)
    if plan is None or plan.x is None or not 0 <= token_id < plan.embed_rows:
        return None
    (cos, sin), local = model.rotary_tables()
    tables = (cos, sin, *(local or (None, None)))
    args = plan.token_args
    if args is None or any(a is not b for a, b in zip(args[0], tables)):
        args = plan.token_args = _rope_tables(plan, tables, model)
    _, rows, pointers, (eps, n_head, n_kv_head, head_dim) = args
    if not 0 <= position < rows:
        return None
    cos, sin, cos_local, sin_local = (p + position * (4 * plan.rotary_width) if p else None for p in pointers)
    plan.opts.cos_local, plan.opts.sin_local = cos_local, sin_local
    return _run_token(plan, token_id, position, cache,
                      lambda out, start, half, threads: native.library().ct_llama_layers_step(
                          plan.layers, plan.n_layer, eps, cos, sin, out, start, cache.max_len, n_head, n_kv_head,
                          head_dim, half, plan.opts_arg, plan.input_arg, plan.head_arg, threads))


def _rope_tables(plan: _Plan, tables, model) -> tuple:
    """(the model's rotary tables: cos, sin, the local layers' cos, sin or None; the positions the
    kernels can take from them (0: none); their addresses; the step's constants: kept so that a
    step reads no module attribute). Sets the embedding's scale."""
    cos = tables[0]
    width = plan.rotary_width
    usable = all(t.dtype == torch.float32 and t.dim() == 2 and t.is_contiguous() and t.shape == cos.shape
                 and (width == 0 or t.size(1) == width) for t in tables if t is not None)
    pointers = tuple(t.data_ptr() if t is not None else None for t in tables)
    plan.input.scale = float(model.embed_scale)
    block = model.layers[0]
    attn = block.attn
    return tables, cos.size(0) if usable else 0, pointers, (block.attn_norm.eps, attn.n_head, attn.n_kv_head,
                                                             attn.head_dim)


def _run(x: torch.Tensor, input_pos: torch.Tensor, cache, plan: _Plan, kernel) -> tuple[torch.Tensor, bool]:
    """The cache's bookkeeping for the new position, then `kernel(out, start, half, threads)`
    on a copy of the residual stream, which it updates in place, and the logits if the plan
    has the head."""
    start, _ = cache.reserve(0, input_pos, 1)
    out = x.reshape(-1).clone()
    logits = plan.logits_into()
    if kernel(out.data_ptr(), start, _CACHE_DTYPES[cache.keys.dtype], torch.get_num_threads()):
        raise MemoryError("the CPU decode kernel could not allocate its buffers")
    if logits is not None:
        return logits.view(1, 1, -1), True
    return out.view(1, 1, -1), False


def _token_plan(model, cache, plan_of) -> _Plan | None:
    """`plan_of(model, cache)`, or the last step by token id's plan where that was this model on
    this cache (three weak references compared: the full lookup's checks cost ~30 us a step on
    the caches the step before had flushed)."""
    global _last
    last = _last
    if last is not None and last[0]() is model and last[1]() is cache and not model.training:
        plan = last[2]()
        if plan is not None and plan.keys is cache.keys:
            return plan
    plan = plan_of(model, cache)
    if plan is not None:
        _last = (weakref.ref(model), weakref.ref(cache), weakref.ref(plan))
    return plan


def _run_token(plan: _Plan, token_id: int, position: int, cache, kernel) -> torch.Tensor:
    """The cache's bookkeeping for `position`, then `kernel(out, start, half, threads)` reading
    token `token_id`'s embedding (and the position's: plan.input) itself; the next-token logits (vocab,).
    Why from ints: the two id tensors, the embedding lookup, the rotary rows' indexing and the
    residual's copy were ~0.3 ms of a 5 ms SmolLM2 step, each PyTorch operation slow on the
    caches the previous step had just flushed."""
    start = cache.reserve_position(position)
    plan.input.token = token_id
    logits = plan.logits_into()
    if kernel(plan.x.data_ptr(), start, _CACHE_DTYPES[cache.keys.dtype], torch.get_num_threads()):
        raise MemoryError("the CPU decode kernel could not allocate its buffers")
    return logits
