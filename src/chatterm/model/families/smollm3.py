"""SmolLM3, written as its difference from Llama (llama.py): some layers ("NoPE" layers) skip
the rotary embedding, by default every fourth one. The config's `no_rope_layers` (1: rotate,
0: not) says which; a GGUF file does not store it, and llama.cpp fixes every fourth layer
(smollm3.cpp), so that is what a GGUF file gets here too. llama.cpp's converter writes it as a
Llama, with the query/key rows reordered.

The fused CPU decode step skips the rotation where the attention's `rotary_dims` is 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import Family, typed
from . import llama
from .llama import Attention, Block, Llama, LlamaConfig

NO_ROPE_INTERVAL = 4  # transformers' and llama.cpp's default: layers 4, 8, ... (counting from 1) skip it


@dataclass(frozen=True)
class SmolLM3Config(LlamaConfig):
    rope_layers: tuple = ()  # per layer: rotate its queries and keys (empty: every layer)
    architecture: str = field(default="smollm3", compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rope_layers and len(self.rope_layers) != self.n_layer:
            raise ValueError(f"model config: no_rope_layers has {len(self.rope_layers)} entries for {self.n_layer} layers")


class NoPEAttention(Attention):
    def __init__(self, config: SmolLM3Config, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        self.use_rope = not config.rope_layers or bool(config.rope_layers[layer_idx])
        self.rotary_dims = self.rotary_dims if self.use_rope else 0

    def position(self, qk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return super().position(qk, cos, sin) if self.use_rope else qk


class SmolLM3Block(Block):
    attention_class = NoPEAttention


class SmolLM3(Llama):
    block_class = SmolLM3Block


def every_nth_without_rope(n_layer: int, interval: int = NO_ROPE_INTERVAL) -> tuple:
    return tuple(int((i + 1) % interval != 0) for i in range(n_layer))


def config_from_hf(raw: dict, context: int | None) -> SmolLM3Config:
    if raw.get("use_sliding_window"):
        raise ValueError("use_sliding_window is not supported for SmolLM3")
    n_layer = typed(raw, "num_hidden_layers", int)
    layers = raw.get("no_rope_layers")
    if layers is None:
        layers = every_nth_without_rope(n_layer, typed(raw, "no_rope_layer_interval", int, NO_ROPE_INTERVAL))
    if not isinstance(layers, list | tuple) or not all(v in (0, 1) and not isinstance(v, float) for v in layers):
        raise ValueError(f"no_rope_layers must be a list of 0 and 1, got {layers!r:.40}")
    return llama.config_from_hf(raw, context, SmolLM3Config, rope_layers=tuple(int(v) for v in layers))


def config_from_gguf(g, arch: str, context: int | None) -> SmolLM3Config:
    n_layer = typed(g.metadata, f"{arch}.block_count", int, label="metadata ")
    return llama.config_from_gguf(g, arch, context, SmolLM3Config, rope_layers=every_nth_without_rope(n_layer))


FAMILY = Family(
    name="smollm3",
    declared_as=("smollm3",),
    gguf_architectures=("smollm3",),
    config_class=SmolLM3Config,
    module_class=SmolLM3,
    config_from_hf=config_from_hf,
    config_from_gguf=config_from_gguf,
    hf_tensors=llama.hf_tensors,
    gguf_tensors=lambda config, arch: llama.gguf_tensors(config, arch, permuted=True),
    after_load=lambda model: model.build_rotary_tables(),
)
