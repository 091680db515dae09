"""Phi-3 and Phi-4-mini (`Phi3ForCausalLM`; GGUF `phi3`), as their difference from Llama
(llama.py): q, k and v stored as one projection and gate/up as one (our layers are fused the
same way, so each is read as is), rotary embedding over the first `rotary_dims` of each head
only (Phi-4-mini: 3/4), and LongRoPE: per-frequency divisors, `short_factor` while the window
in use fits the trained one, `long_factor` beyond, and cos/sin scaled by an attention factor.

The factors are picked once for the window in use, as llama.cpp does (transformers switches when
a sequence passes the original window, which would change the keys already cached). Phi-3's
`sliding_window` (2047 for the 4k model) is not applied: positions past it differ from
transformers', as llama.cpp's do (it turns Phi-3's window off on load, llama.cpp PR 13676; the
later Phi-3.5 and Phi-4-mini configs give a window of 262144, none in practice).

The fused CPU decode step computes the blocks, partial rotation included (it takes the scaled
cos/sin rows as given and turns each head's first `rotary_dims`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from . import Family, Sources, TensorMap, typed
from . import llama
from .llama import Attention, Block, Llama, LlamaConfig, rotary_frequencies, rotate


@dataclass(frozen=True)
class Phi3Config(LlamaConfig):
    rotary_dims: int = 0  # leading dims of each head that rotate; 0: all
    rope_attention_factor: float = 1.0  # LongRoPE's scale on cos and sin
    architecture: str = field(default="phi3", compare=False)

    @property
    def rotated(self) -> int:
        return self.rotary_dims or self.head_dim


class PartialRotaryAttention(Attention):
    def __init__(self, config: Phi3Config, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        self.rotary_dims = config.rotated

    def position(self, qk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        r = self.rotary_dims
        if r == self.head_dim:
            return rotate(qk, cos, sin)
        return torch.cat((rotate(qk[..., :r], cos, sin), qk[..., r:]), dim=-1)


class Phi3Block(Block):
    attention_class = PartialRotaryAttention


class Phi3(Llama):
    block_class = Phi3Block

    def build_rotary_tables(self) -> None:
        """Tables over the rotated dims, LongRoPE's factors applied, scaled by its attention factor."""
        config = self.config
        frequencies = rotary_frequencies(replace(config, head_size=config.rotated))
        angles = torch.outer(torch.arange(config.block_size, dtype=torch.float32), frequencies)
        angles = torch.cat((angles, angles), dim=-1).to(self.norm.weight.device)  # (block_size, rotated)
        self.rope_cos = angles.cos() * config.rope_attention_factor
        self.rope_sin = angles.sin() * config.rope_attention_factor


def longrope(block_size: int, trained: int, original: int, short, long, attention_factor: float | None):
    """(scaling for LlamaConfig, attention factor) of LongRoPE for a window of `block_size`."""
    factors = long if block_size > original else short
    if attention_factor is None:
        scale = trained / original
        attention_factor = math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1 else 1.0
    return {"rope_type": "factors", "factors": [float(f) for f in factors]}, float(attention_factor)


def config_from_hf(raw: dict, context: int | None) -> Phi3Config:
    rope = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    kind = rope.get("rope_type", rope.get("type", "default"))
    heads, n_embd = typed(raw, "num_attention_heads", int), typed(raw, "hidden_size", int)
    head_dim = typed(raw, "head_dim", int, None) or n_embd // heads
    partial = typed({**raw, **rope}, "partial_rotary_factor", float, 1.0)
    config = llama.config_from_hf({**raw, "rope_parameters": {"rope_theta": rope.get("rope_theta", raw.get("rope_theta", 10000.0))}},
                                  context, Phi3Config, rotary_dims=int(head_dim * partial))
    if kind in ("longrope", "su"):
        trained = config.max_position_embeddings
        original = typed({**raw, **rope}, "original_max_position_embeddings", int, trained)
        scaling, factor = longrope(config.block_size, trained, original, rope["short_factor"], rope["long_factor"],
                                   rope.get("attention_factor"))
        config = replace(config, rope_scaling=scaling, rope_attention_factor=factor)
    elif kind != "default":
        raise ValueError(f"rope scaling type {kind!r} is not supported for Phi-3 (supported: longrope)")
    return config


def config_from_gguf(g, arch: str, context: int | None) -> Phi3Config:
    meta = g.metadata
    config = llama.config_from_gguf(g, arch, context, Phi3Config)
    heads = typed(meta, f"{arch}.attention.head_count", int, label="metadata ")
    rotary = typed(meta, f"{arch}.rope.dimension_count", int, 0, label="metadata ")
    config = replace(config, head_size=typed(meta, f"{arch}.embedding_length", int, label="metadata ") // heads,
                     rotary_dims=rotary, rope_scaling=None)
    if "rope_factors_short.weight" in g.tensors:
        original = typed(meta, f"{arch}.rope.scaling.original_context_length", int, config.max_position_embeddings,
                         label="metadata ")
        scaling, factor = longrope(config.block_size, config.max_position_embeddings, original,
                                   g.tensor("rope_factors_short.weight").tolist(), g.tensor("rope_factors_long.weight").tolist(),
                                   typed(meta, f"{arch}.rope.scaling.attn_factor", float, None, label="metadata "))
        config = replace(config, rope_scaling=scaling, rope_attention_factor=factor)
    return config


def hf_tensors(config: Phi3Config) -> TensorMap:
    names = llama.hf_tensors(config)
    for i in range(config.n_layer):
        names[f"layers.{i}.attn.qkv.weight"] = Sources.of(f"layers.{i}.self_attn.qkv_proj.weight")
        del names[f"layers.{i}.attn.qkv.bias"]
        names[f"layers.{i}.mlp.gate_up.weight"] = Sources.of(f"layers.{i}.mlp.gate_up_proj.weight")
    return names


def gguf_tensors(config: Phi3Config, arch: str) -> TensorMap:
    names = llama.gguf_tensors(config, arch)
    for i in range(config.n_layer):
        names[f"layers.{i}.attn.qkv.weight"] = Sources.of(f"blk.{i}.attn_qkv.weight")
        del names[f"layers.{i}.attn.qkv.bias"]
        names[f"layers.{i}.mlp.gate_up.weight"] = Sources.of(f"blk.{i}.ffn_up.weight")  # gate rows, then up rows
    return names


FAMILY = Family(
    name="phi3",
    declared_as=("phi3",),
    gguf_architectures=("phi3",),
    config_class=Phi3Config,
    module_class=Phi3,
    config_from_hf=config_from_hf,
    config_from_gguf=config_from_gguf,
    hf_tensors=hf_tensors,
    gguf_tensors=gguf_tensors,
    after_load=lambda model: model.build_rotary_tables(),
)
