"""Gemma 3 (text: `Gemma3ForCausalLM`, 270M-1B; GGUF `gemma3`), as its difference from Llama
(llama.py) and Qwen3 (the q/k norm):

- local layers attend to the last `sliding_window` positions only, global ones to everything
  (the config's `layer_types`; in GGUF files `attention.sliding_window_pattern`, by default
  every sixth layer global, as llama.cpp has it), each kind with its own rotary base (10k local,
  1M global, where the global layers' scaling, if any, also applies);
- embeddings scaled by sqrt(hidden), attention scaled by query_pre_attn_scalar^-1/2;
- an RMSNorm before and after both the attention and the MLP; the MLP a GELU-tanh gated one;
- every norm scales by (1 + w): Hugging Face stores w, llama.cpp's converter 1 + w, so the
  folder's norms are read with 1 added and both run the plain RMSNorm.

The KV cache holds every position for every layer (a local layer would need only its window:
a saving left for later). The fused CPU decode step (native_blocks.py) does all of the above
from what these modules declare (the window, the scale, the post norms, the gate, the local
tables, the embedding's scale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import Family, Part, Sources, TensorMap, typed
from . import llama
from ..cpu.native_blocks import llama_decode_step
from .llama import Llama, LlamaConfig, RMSNorm, SwiGLU, rotary_frequencies
from .qwen3 import QKNormAttention

GGUF_GLOBAL_EVERY = 6  # llama.cpp's default pattern: five local layers, then a global one


@dataclass(frozen=True)
class Gemma3Config(LlamaConfig):
    sliding_window: int = 0  # positions a local layer sees (itself included); 0: no local layers
    local_layers: tuple = ()  # per layer: 1 for a local (sliding window) layer, 0 for a global one
    rope_local_theta: float = 10000.0  # rotary base of the local layers (rope_theta: the global ones')
    query_pre_attn_scalar: float = 256.0  # attention scores are scaled by its inverse square root
    final_logit_softcapping: float = 0.0  # logits = cap * tanh(logits / cap); 0: none
    architecture: str = field(default="gemma3", compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.local_layers) != self.n_layer:
            raise ValueError(f"model config: {len(self.local_layers)} layer types for {self.n_layer} layers")
        if any(self.local_layers) and self.sliding_window <= 0:
            raise ValueError("model config: sliding_window must be a positive integer")
        if self.query_pre_attn_scalar <= 0:
            raise ValueError("model config: query_pre_attn_scalar must be positive")

    def num_params(self) -> int:
        return super().num_params() + self.n_layer * (2 * self.n_embd + 2 * self.head_dim)  # the extra norms


class Gemma3Attention(QKNormAttention):
    def __init__(self, config: Gemma3Config, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        self.window = config.sliding_window if config.local_layers[layer_idx] else 0
        self.scale = config.query_pre_attn_scalar ** -0.5

    def forward(self, x, cos, sin, input_pos, cache) -> torch.Tensor:
        B, T, _ = x.shape
        q_width, kv_width, _ = self.split
        qk, v = self.qkv(x).split((q_width + kv_width, kv_width), dim=2)
        qk = self.position(qk.view(B, T, self.n_head + self.n_kv_head, self.head_dim), cos, sin)
        q, k = qk.split((self.n_head, self.n_kv_head), dim=2)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, nh, T, hs), (B, nkv, T, hs)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        key_pos = input_pos
        if cache is not None:
            k, v, _ = cache.update(self.layer_idx, input_pos, k, v)  # (B, nkv, S, hs): positions 0..S-1
            key_pos = torch.arange(k.size(2), device=k.device)
        # A query sees the keys at or before it; in a local layer, only the last `window` of them.
        distance = input_pos.unsqueeze(1) - key_pos.unsqueeze(0)  # (T, S)
        mask = (distance >= 0) & (distance < self.window) if self.window else distance >= 0
        group = self.n_head // self.n_kv_head
        k, v = k.to(q.dtype), v.to(q.dtype)
        if group > 1:
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # (B, nh, S, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)  # (B, nh, T, hs)
        return self.out(y.transpose(1, 2).reshape(B, T, -1))


class GeGLU(SwiGLU):
    gate = "gelu_tanh"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).split(self.hidden, dim=-1)
        return self.down(F.gelu(gate, approximate="tanh") * up)


class Gemma3Block(nn.Module):
    def __init__(self, config: Gemma3Config, layer_idx: int) -> None:
        super().__init__()
        norm = lambda: RMSNorm(config.n_embd, config.rms_norm_eps)  # noqa: E731
        self.attn_norm, self.post_attn_norm, self.mlp_norm, self.post_mlp_norm = norm(), norm(), norm(), norm()
        self.attn = Gemma3Attention(config, layer_idx)
        self.mlp = GeGLU(config)

    def post_norms(self) -> tuple[RMSNorm, RMSNorm]:
        return self.post_attn_norm, self.post_mlp_norm

    def forward(self, x, cos, sin, input_pos, cache) -> torch.Tensor:
        x = x + self.post_attn_norm(self.attn(self.attn_norm(x), cos, sin, input_pos, cache))
        return x + self.post_mlp_norm(self.mlp(self.mlp_norm(x)))


class Gemma3(Llama):
    block_class = Gemma3Block

    def __init__(self, config: Gemma3Config) -> None:
        super().__init__(config)
        self.embed_scale = math.sqrt(config.n_embd)
        self.logit_softcap = config.final_logit_softcapping
        if self.embed_tokens.weight.is_meta:  # else built by Llama's __init__
            for name in ("rope_cos_local", "rope_sin_local"):
                self.register_buffer(name, torch.empty(0), persistent=False)

    def build_rotary_tables(self) -> None:
        """Llama's tables for the global layers, and a second pair for the local ones."""
        super().build_rotary_tables()
        local = replace(self.config, rope_theta=self.config.rope_local_theta, rope_scaling=None)
        angles = torch.outer(torch.arange(self.config.block_size, dtype=torch.float32), rotary_frequencies(local))
        angles = torch.cat((angles, angles), dim=-1).to(self.rope_cos.device)  # (block_size, hs)
        self.register_buffer("rope_cos_local", angles.cos(), persistent=False)  # registered here: Llama's
        self.register_buffer("rope_sin_local", angles.sin(), persistent=False)  # __init__ calls this first

    def rotary_tables(self):
        return (self.rope_cos, self.rope_sin), (self.rope_cos_local, self.rope_sin_local)

    def forward(self, idx, input_pos=None, cache=None, *, last_logits_only: bool = False) -> torch.Tensor:
        """As Llama.forward."""
        B, T = idx.shape
        if input_pos is None:
            if cache is not None:
                raise ValueError("a forward pass with a KV cache needs input_pos (where the tokens go)")
            input_pos = torch.arange(T, device=idx.device)
        x = self.embed_tokens(idx) * self.embed_scale  # (B, T, C)
        tables = {}
        for local, cos, sin in ((0, self.rope_cos, self.rope_sin), (1, self.rope_cos_local, self.rope_sin_local)):
            tables[local] = (cos[input_pos].to(x.dtype).unsqueeze(1), sin[input_pos].to(x.dtype).unsqueeze(1))
        fused = None
        if cache is not None and T == 1 and self.decode_note is None:
            fused = llama_decode_step(self, x, *tables[0], input_pos, cache, local=tables[1])
        if fused is not None:  # a decode step: every block in one call on the CPU kernels
            x, is_logits = fused
            if is_logits:  # and the final norm and head too (there is no cap then)
                return x
        else:
            for block in self.layers:
                x = block(x, *tables[bool(block.attn.window)], input_pos, cache)
        if last_logits_only:
            x = x[:, -1:, :]
        logits = self.lm_head(self.norm(x))  # (B, T or 1, vocab)
        cap = self.logit_softcap
        return torch.tanh(logits / cap) * cap if cap else logits


# -- reading configs ------------------------------------------------------------------------------


def config_from_hf(raw: dict, context: int | None) -> Gemma3Config:
    """config.json of Gemma3ForCausalLM (transformers 4's spelling, rope_theta and
    rope_local_base_freq, or 5's, rope_parameters per layer type)."""
    if raw.get("attn_logit_softcapping"):
        raise ValueError("attn_logit_softcapping is not supported (Gemma 2's)")
    n_layer = typed(raw, "num_hidden_layers", int)
    rope = raw.get("rope_parameters") or {}
    local_theta = typed(raw, "rope_local_base_freq", float, 10000.0)
    if isinstance(rope, dict) and "full_attention" in rope:  # transformers 5: one entry per layer type
        local_theta = typed(rope.get("sliding_attention") or {}, "rope_theta", float, local_theta)
        raw = {**raw, "rope_parameters": rope["full_attention"]}
    types = raw.get("layer_types")
    if types is None:
        every = typed(raw, "sliding_window_pattern", int, GGUF_GLOBAL_EVERY)
        types = ["full_attention" if (i + 1) % every == 0 else "sliding_attention" for i in range(n_layer)]
    if not isinstance(types, list) or not all(t in ("sliding_attention", "full_attention") for t in types):
        raise ValueError(f"layer_types must list sliding_attention and full_attention, got {types!r:.60}")
    head_dim = typed(raw, "head_dim", int, 256)
    return llama.config_from_hf(
        {"tie_word_embeddings": True, "head_dim": head_dim, **raw}, context, Gemma3Config,  # Gemma ties by default
        sliding_window=typed(raw, "sliding_window", int, 4096) or 0,
        local_layers=tuple(int(t == "sliding_attention") for t in types),
        rope_local_theta=local_theta,
        query_pre_attn_scalar=typed(raw, "query_pre_attn_scalar", float, float(head_dim)),
        final_logit_softcapping=typed(raw, "final_logit_softcapping", float, None) or 0.0,
    )


def config_from_gguf(g, arch: str, context: int | None) -> Gemma3Config:
    """GGUF metadata (`gemma3.*`), read as llama.cpp reads it: the attention scale from the
    head width (llama.cpp's choice for every size but 27B), the local base 10k unless stored."""
    meta = g.metadata
    n_layer = typed(meta, f"{arch}.block_count", int, label="metadata ")
    window = typed(meta, f"{arch}.attention.sliding_window", int, 0, label="metadata ")
    pattern = meta.get(f"{arch}.attention.sliding_window_pattern", GGUF_GLOBAL_EVERY)
    if isinstance(pattern, list):  # one flag per layer
        local = tuple(int(bool(p)) for p in pattern)
    else:
        every = typed({"pattern": pattern}, "pattern", int, label=f"metadata {arch}.attention.sliding_window_")
        local = tuple(int(window > 0 and i % every < every - 1) for i in range(n_layer))
    config = llama.config_from_gguf(
        g, arch, context, Gemma3Config, sliding_window=window, local_layers=local,
        rope_local_theta=typed(meta, f"{arch}.rope.freq_base_swa", float, 10000.0, label="metadata "),
        final_logit_softcapping=typed(meta, f"{arch}.final_logit_softcapping", float, 0.0, label="metadata "),
        query_pre_attn_scalar=256.0)
    return replace(config, query_pre_attn_scalar=float(config.head_dim))


# -- where the tensors are stored -----------------------------------------------------------------

# our norm -> (Hugging Face's, llama.cpp's)
_NORMS = {"attn_norm": ("input_layernorm", "attn_norm"), "post_attn_norm": ("post_attention_layernorm", "post_attention_norm"),
          "mlp_norm": ("pre_feedforward_layernorm", "ffn_norm"), "post_mlp_norm": ("post_feedforward_layernorm", "post_ffw_norm"),
          "attn.q_norm": ("self_attn.q_norm", "attn_q_norm"), "attn.k_norm": ("self_attn.k_norm", "attn_k_norm")}


def hf_tensors(config: Gemma3Config) -> TensorMap:
    names = llama.hf_tensors(config)
    names["norm.weight"] = Sources((Part("norm.weight", offset=1.0),))
    for i in range(config.n_layer):
        for ours, (theirs, _) in _NORMS.items():
            names[f"layers.{i}.{ours}.weight"] = Sources((Part(f"layers.{i}.{theirs}.weight", offset=1.0),))
    return names


def gguf_tensors(config: Gemma3Config, arch: str) -> TensorMap:
    names = llama.gguf_tensors(config, arch)  # Gemma files keep Hugging Face's q/k row order
    for i in range(config.n_layer):
        for ours, (_, theirs) in _NORMS.items():
            names[f"layers.{i}.{ours}.weight"] = Sources.of(f"blk.{i}.{theirs}.weight")
    return names


FAMILY = Family(
    name="gemma3",
    declared_as=("gemma3", "gemma3_text"),
    gguf_architectures=("gemma3",),
    config_class=Gemma3Config,
    module_class=Gemma3,
    config_from_hf=config_from_hf,
    config_from_gguf=config_from_gguf,
    hf_tensors=hf_tensors,
    gguf_tensors=gguf_tensors,
    after_load=lambda model: model.build_rotary_tables(),
)
