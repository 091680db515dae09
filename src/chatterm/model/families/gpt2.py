"""The GPT-2 family: its config and named shapes, where its tensors are stored (GGUF files; the
in-memory state dicts of our format, nanoGPT, the textbook and Hugging Face, translated by
`formats/state_dicts.py`), and the torch module.

Learned absolute positions, pre-LayerNorm blocks, GELU (tanh approximation), tied input/output
embeddings, optional biases, attention through `scaled_dot_product_attention`.

`forward(idx, input_pos, cache)` takes positions explicitly. Without a cache it is the plain
causal model (training, uncached decoding). With a `KVCache` it writes the new keys/values into
the cache at `input_pos` and attends over everything cached before them, so a step can feed any
number of new tokens after any cached prefix (prefill, decode, prefix reuse). `input_pos` is the
only record of where tokens go: the cache keeps its own bookkeeping from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..kv_cache import KVCache
from ..cpu.native_attention import attend_one
from ..cpu.native_blocks import gpt2_decode_step, gpt2_decode_token
from . import Family, Sources, TensorMap, typed


@dataclass(frozen=True)
class GPTConfig:
    block_size: int = 1024  # context window: the number of learned positions
    vocab_size: int = 50257  # rows of the embedding; may be padded past the tokenizer's size
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention heads per block
    n_embd: int = 768  # residual stream width
    bias: bool = True  # biases in Linear and LayerNorm layers (GPT-2 has them)
    layer_norm_eps: float = 1e-5  # epsilon of every LayerNorm
    dropout: float = 0.0  # only used while training
    tie_embeddings: bool = True  # output projection shares the token embedding (GPT-2 does)

    def __post_init__(self) -> None:
        # Configs come from strangers' files: check every type (True is an int to Python, "1e-5"
        # is not a float), so a bad value is one clear line here, not a crash deep in torch.
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"model config: {name} must be a positive integer, got {value!r:.40}")
        for name in ("bias", "tie_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"model config: {name} must be true or false, got {getattr(self, name)!r:.40}")
        for name, low, high in (("layer_norm_eps", 0.0, 1.0), ("dropout", 0.0, 1.0)):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value < high:
                raise ValueError(f"model config: {name} must be a number from {low:g} to below {high:g}, got {value!r:.40}")
        if self.layer_norm_eps == 0:
            raise ValueError("model config: layer_norm_eps must be above 0")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"model config: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "GPTConfig":
        """Build from a dict, ignoring keys that are not config fields (e.g. nanoGPT extras)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def num_params(self, include_position: bool = True) -> int:
        """Parameter count with tied input/output embeddings."""
        d, L = self.n_embd, self.n_layer
        # attention 4d^2 + MLP 8d^2 weights; 9d of biases; two LayerNorms (weight, bias)
        per_block = 12 * d * d + (9 * d if self.bias else 0) + (4 * d if self.bias else 2 * d)
        embeddings = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        total = embeddings + L * per_block + (2 * d if self.bias else d)
        if include_position:
            total += self.block_size * d
        return total


# Named shapes. The GPT-2 family matches OpenAI's released models; the small ones are for tests,
# benchmarks and models trained on a laptop.
SHAPES: dict[str, GPTConfig] = {
    "gpt2": GPTConfig(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": GPTConfig(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": GPTConfig(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": GPTConfig(n_layer=48, n_head=25, n_embd=1600),
    "tiny": GPTConfig(block_size=128, vocab_size=512, n_layer=2, n_head=2, n_embd=32),
    "small": GPTConfig(block_size=512, vocab_size=4096, n_layer=4, n_head=4, n_embd=256),
    "base": GPTConfig(block_size=1024, vocab_size=8192, n_layer=8, n_head=8, n_embd=512),
}


def shape(name: str) -> GPTConfig:
    """Look up a named shape, with a clear error listing the known names."""
    try:
        return SHAPES[name]
    except KeyError:
        raise ValueError(f"unknown model shape {name!r}; known shapes: {', '.join(SHAPES)}") from None


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, input_pos: torch.Tensor | None, cache: KVCache | None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        dropout = self.dropout if self.training else 0.0
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        else:
            k, v, mask = cache.update(self.layer_idx, input_pos, k, v)  # (B, nh, S, hs)
            if T == 1 and mask is None and (y := attend_one(q, k, v)) is not None:  # a decode step
                return self.c_proj(y)
            causal = mask is None and T > 1
            k, v = k.to(q.dtype), v.to(q.dtype)  # an fp16 cache under fp32 activations (a no-op otherwise)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        y = self.c_proj(y)
        return F.dropout(y, dropout, self.training) if self.training else y


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))
        return F.dropout(x, self.dropout, self.training) if self.training else x


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, input_pos: torch.Tensor | None, cache: KVCache | None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), input_pos, cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    decode_note: str | None = None  # as Llama's: the fused CPU decode step covers GPT-2 whole

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                h=nn.ModuleList(Block(config, i) for i in range(config.n_layer)),
                ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight

    def init_weights(self, seed: int | None = None) -> "GPT":
        """GPT-2 initialisation (normal 0.02, residual projections scaled by 1/sqrt(2 * n_layer))."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        for name, p in self.named_parameters():
            if p.dim() < 2:
                nn.init.zeros_(p) if name.endswith("bias") else nn.init.ones_(p)
                continue
            std = 0.02
            if name.endswith("c_proj.weight"):
                std = 0.02 / (2 * self.config.n_layer) ** 0.5
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=gen) * std)
        return self

    def forward(
        self,
        idx: torch.Tensor,
        input_pos: torch.Tensor | None = None,
        cache: KVCache | None = None,
        *,
        last_logits_only: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, vocab) for token ids `idx` (B, T) at positions `input_pos` (T,).

        `input_pos` is required with a cache (where the new keys/values go); without one it
        defaults to 0..T-1. With `last_logits_only` only the final position's logits are
        computed, (B, 1, vocab): prefill needs nothing else, and the vocabulary projection of a
        long prompt is by far its most expensive matmul.
        """
        B, T = idx.shape
        if input_pos is None:
            if cache is not None:
                raise ValueError("a forward pass with a KV cache needs input_pos (where the tokens go)")
            input_pos = torch.arange(T, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(input_pos)  # (B, T, C)
        fused = gpt2_decode_step(self, x, input_pos, cache) if cache is not None and T == 1 else None
        if fused is not None:  # a decode step: every block in one call on the CPU kernels
            x, is_logits = fused
            if is_logits:  # and the final norm and head too
                return x
        else:
            for block in self.transformer.h:
                x = block(x, input_pos, cache)
        if last_logits_only:
            x = x[:, -1:, :]
        x = self.transformer.ln_f(x)
        return self.lm_head(x)  # (B, T or 1, vocab)

    def decode_token(self, token_id: int, position: int, cache: KVCache) -> torch.Tensor | None:
        """Next-token logits (vocab,) after `token_id` at `position` (Python ints), written into
        `cache`, in one call into the CPU kernels; None where that path does not apply, and the
        caller runs forward() with tensors."""
        return gpt2_decode_token(self, token_id, position, cache) if self.decode_note is None else None

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights counted once


# -- reading configs, and where the tensors are stored ----------------------------------------


# The textbook's config keys, for sidecar JSON files written in that style.
TEXTBOOK_CONFIG_KEYS = {
    "vocab_size": "vocab_size",
    "context_length": "block_size",
    "emb_dim": "n_embd",
    "n_heads": "n_head",
    "n_layers": "n_layer",
    "drop_rate": "dropout",
}
# Hugging Face GPT2Config keys.
HF_CONFIG_KEYS = {
    "vocab_size": "vocab_size",
    "n_positions": "block_size",
    "n_embd": "n_embd",
    "n_head": "n_head",
    "n_layer": "n_layer",
    "layer_norm_epsilon": "layer_norm_eps",
}


def normalize_config_keys(raw: dict) -> dict:
    """Accept our, nanoGPT's, Hugging Face's or the textbook's config key names."""
    out = dict(raw)
    for table in (TEXTBOOK_CONFIG_KEYS, HF_CONFIG_KEYS):
        for theirs, ours in table.items():
            if theirs in raw and ours not in raw:
                out[ours] = raw[theirs]
    return out



def config_from_hf(raw: dict, context: int | None) -> GPTConfig:
    """A GPT-2 config in any of the key spellings (ours, nanoGPT's, Hugging Face's, the textbook's)."""
    cfg = normalize_config_keys(raw)
    cfg.setdefault("bias", True)
    return GPTConfig.from_dict(cfg)


def config_from_gguf(g, arch: str, context: int | None) -> GPTConfig:
    """GGUF metadata (`gpt2.*`) -> GPTConfig; the window is capped after loading: position
    embeddings have a fixed number of rows."""
    meta = g.metadata

    def n(key, default=None):
        return typed(meta, f"gpt2.{key}", int, default, label="metadata ")

    return GPTConfig(
        block_size=n("context_length"), vocab_size=g.tensors["token_embd.weight"].shape[0], n_layer=n("block_count"),
        n_head=n("attention.head_count"), n_embd=n("embedding_length"), bias=True,
        layer_norm_eps=typed(meta, "gpt2.attention.layer_norm_epsilon", float, 1e-5, label="metadata "),
        tie_embeddings="output.weight" not in g.tensors,
    )


def gguf_tensors(config: GPTConfig, arch: str) -> TensorMap:
    names = {"transformer.wte.weight": Sources.of("token_embd.weight"),
             "transformer.wpe.weight": Sources.of("position_embd.weight"),
             "transformer.ln_f.weight": Sources.of("output_norm.weight"),
             "transformer.ln_f.bias": Sources.of("output_norm.bias"),
             "lm_head.weight": Sources.of("output.weight", optional=config.tie_embeddings)}
    pairs = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm",
             "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
    for i in range(config.n_layer):
        for ours, theirs in pairs.items():
            for kind in ("weight", "bias"):
                names[f"transformer.h.{i}.{ours}.{kind}"] = Sources.of(f"blk.{i}.{theirs}.{kind}", optional=kind == "bias")
    return names


FAMILY = Family(
    name="gpt2",
    declared_as=("gpt2",),
    gguf_architectures=("gpt2",),
    config_class=GPTConfig,
    module_class=GPT,
    config_from_hf=config_from_hf,
    config_from_gguf=config_from_gguf,
    hf_tensors=None,  # GPT-2 folders are read whole and translated by formats/state_dicts.py
    gguf_tensors=gguf_tensors,
)
