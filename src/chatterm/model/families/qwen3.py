"""Qwen3 (dense, 0.6B-32B), written as its difference from Llama (llama.py): every head's
queries and keys pass an RMSNorm over the head's width before the rotary embedding, and there
are no q/k/v biases (Qwen2's are gone). Everything else, the config's reading included, is
Llama's.

The fused CPU decode step (native_blocks.py) applies the q/k norms the attention declares
(`qk_norms()`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import Family, Sources, TensorMap
from . import llama
from .llama import Attention, Block, Llama, LlamaConfig, RMSNorm, rotate


@dataclass(frozen=True)
class Qwen3Config(LlamaConfig):
    architecture: str = field(default="qwen3", compare=False)

    def num_params(self) -> int:
        return super().num_params() + self.n_layer * 2 * self.head_dim  # the q and k norms


class QKNormAttention(Attention):
    """Llama's attention with an RMSNorm over each head's queries and keys before rotation
    (Qwen3; Gemma 3 uses the same step)."""

    def __init__(self, config: LlamaConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps)

    def position(self, qk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        q, k = qk.split((self.n_head, self.n_kv_head), dim=2)  # (B, T, nh, hs), (B, T, nkv, hs)
        return rotate(torch.cat((self.q_norm(q), self.k_norm(k)), dim=2), cos, sin)

    def qk_norms(self) -> tuple[RMSNorm, RMSNorm]:
        return self.q_norm, self.k_norm


class Qwen3Block(Block):
    attention_class = QKNormAttention


class Qwen3(Llama):
    block_class = Qwen3Block


def config_from_hf(raw: dict, context: int | None) -> Qwen3Config:
    return llama.config_from_hf(raw, context, Qwen3Config)


def config_from_gguf(g, arch: str, context: int | None) -> Qwen3Config:
    return llama.config_from_gguf(g, arch, context, Qwen3Config)


def hf_tensors(config: Qwen3Config) -> TensorMap:
    names = llama.hf_tensors(config)
    for i in range(config.n_layer):
        for n in "qk":
            names[f"layers.{i}.attn.{n}_norm.weight"] = Sources.of(f"layers.{i}.self_attn.{n}_norm.weight")
    return names


def gguf_tensors(config: Qwen3Config, arch: str) -> TensorMap:
    names = llama.gguf_tensors(config, arch)  # Qwen files keep Hugging Face's q/k row order
    for i in range(config.n_layer):
        for n in "qk":
            names[f"layers.{i}.attn.{n}_norm.weight"] = Sources.of(f"blk.{i}.attn_{n}_norm.weight")
    return names


FAMILY = Family(
    name="qwen3",
    declared_as=("qwen3",),
    gguf_architectures=("qwen3",),
    config_class=Qwen3Config,
    module_class=Qwen3,
    config_from_hf=config_from_hf,
    config_from_gguf=config_from_gguf,
    hf_tensors=hf_tensors,
    gguf_tensors=gguf_tensors,
    after_load=lambda model: model.build_rotary_tables(),
)
