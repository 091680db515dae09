"""The Llama family: Llama 2/3, Mistral-style, TinyLlama, SmolLM2, Qwen2: its config (from a
Hugging Face config.json or GGUF metadata), where its tensors are stored, and the torch module.

RMSNorm, rotary position embeddings (`rope_theta`, with the `llama3` or `linear` frequency
scaling where a config has it), a SwiGLU MLP, grouped-query attention (`n_kv_head` key/value
heads shared by groups of query heads), optional q/k/v biases (Qwen2), tied or separate output
embeddings.

The forward signature is the GPT module's, `forward(idx, input_pos, cache, last_logits_only)`, so
the generator, prefix reuse and the context refit work unchanged. The KV cache holds only the
`n_kv_head` key/value heads. Rotary tables cover `block_size` positions (the context window in
use, which may be smaller than what the model was trained for).

Two fusions, because at batch 1 on a CPU every linear call costs: q, k and v are one projection,
and so are the MLP's gate and up projections (loaders concatenate the weights).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..kv_cache import KVCache
from ..cpu.native_attention import attend_one
from ..cpu.native_blocks import llama_decode_step, llama_decode_token
from . import Family, Part, Sources, TensorMap, context_window, typed


@dataclass(frozen=True)
class LlamaConfig:
    block_size: int = 2048  # context window in use: max_position_embeddings, maybe capped lower
    vocab_size: int = 32000  # rows of the token embedding
    n_layer: int = 22  # transformer blocks
    n_head: int = 32  # query heads
    n_kv_head: int = 4  # key/value heads; n_head must be a multiple (grouped-query attention)
    n_embd: int = 2048  # residual stream width
    intermediate_size: int = 5632  # SwiGLU hidden width
    head_size: int = 0  # per-head width; 0 means n_embd // n_head
    rms_norm_eps: float = 1e-5  # epsilon of every RMSNorm
    rope_theta: float = 10000.0  # rotary base frequency
    rope_scaling: dict | None = None  # {"rope_type": "llama3"|"linear"|"factors", ...} or None
    attention_bias: bool = False  # biases on the q/k/v projections (Qwen2 has them)
    tie_embeddings: bool = False  # output projection shares the token embedding
    max_position_embeddings: int = 2048  # positions the model was trained for
    architecture: str = field(default="llama", compare=False)  # the family's registry name

    def __post_init__(self) -> None:
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd", "intermediate_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:  # True is an int to Python
                raise ValueError(f"model config: {name} must be a positive integer, got {value!r:.40}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"model config: n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        if not self.head_size and self.n_embd % self.n_head:
            raise ValueError(f"model config: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.head_dim % 2:
            raise ValueError(f"model config: the head width ({self.head_dim}) must be even for rotary embeddings")
        rope_type = (self.rope_scaling or {}).get("rope_type", "default")
        if rope_type not in ("default", "llama3", "linear", "factors"):
            raise ValueError(f"rope scaling type {rope_type!r} is not supported (supported: llama3, linear)")

    @property
    def head_dim(self) -> int:
        return self.head_size or self.n_embd // self.n_head

    def num_params(self) -> int:
        """Parameter count from the shape alone (tied embeddings counted once), as `Llama.num_params`."""
        d, hd = self.n_embd, self.head_dim
        attention = (self.n_head + 2 * self.n_kv_head) * hd * d + self.n_head * hd * d
        if self.attention_bias:
            attention += (self.n_head + 2 * self.n_kv_head) * hd
        per_layer = attention + 3 * self.intermediate_size * d + 2 * d  # SwiGLU, two RMSNorms
        embeddings = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return embeddings + self.n_layer * per_layer + d

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LlamaConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def rotary_frequencies(config: LlamaConfig) -> torch.Tensor:
    """Inverse frequencies (head_dim / 2,) with the config's scaling applied."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    scaling = config.rope_scaling or {}
    kind = scaling.get("rope_type", "default")
    if kind == "linear":
        return (inv_freq / float(scaling["factor"])).float()
    if kind == "factors":  # GGUF's rope_freqs tensor: one divisor per frequency
        return (inv_freq / torch.tensor(scaling["factors"], dtype=torch.float64)).float()
    if kind == "llama3":
        # Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, and the band in
        # between blended smoothly, so the model reaches 128k positions without retraining.
        factor = float(scaling["factor"])
        low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
        trained = float(scaling.get("original_max_position_embeddings", 8192))
        wavelen = 2 * math.pi / inv_freq
        # 0 for wavelengths longer than trained / low (fully slowed), 1 for those shorter than
        # trained / high (kept), linear in between.
        smooth = ((trained / wavelen - low) / (high - low)).clamp(0.0, 1.0)
        inv_freq = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    return inv_freq.float()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in the "rotate half" layout: dims i and i + hs/2 form a pair."""
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)  # one fused op
        # Half precision: normalised in fp32, then scaled, as the reference implementation does.
        return F.rms_norm(x.float(), (x.size(-1),), eps=self.eps).to(x.dtype) * self.weight


class Attention(nn.Module):
    def __init__(self, config: LlamaConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        q_width, kv_width = config.n_head * config.head_dim, config.n_kv_head * config.head_dim
        self.split = (q_width, kv_width, kv_width)
        self.qkv = nn.Linear(config.n_embd, q_width + 2 * kv_width, bias=config.attention_bias)
        self.out = nn.Linear(q_width, config.n_embd, bias=False)
        # What the fused CPU decode step reads of this attention, besides `qk_norms()`: each
        # head's leading dims `position` turns, the positions a query sees (0: all), the scale
        self.rotary_dims, self.window, self.scale = config.head_dim, 0, config.head_dim ** -0.5

    def forward(self, x, cos, sin, input_pos, cache: KVCache | None) -> torch.Tensor:
        B, T, _ = x.shape
        q_width, kv_width, _ = self.split
        qk, v = self.qkv(x).split((q_width + kv_width, kv_width), dim=2)
        # queries and keys rotated together: half the small ops of rotating each
        qk = self.position(qk.view(B, T, self.n_head + self.n_kv_head, self.head_dim), cos, sin)  # (B, T, nh+nkv, hs)
        q, k = qk.split((self.n_head, self.n_kv_head), dim=2)
        q = q.transpose(1, 2)  # (B, nh, T, hs)
        k = k.transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        mask = None
        if cache is not None:
            k, v, mask = cache.update(self.layer_idx, input_pos, k, v)  # (B, nkv, S, hs)
        group = self.n_head // self.n_kv_head
        if T == 1 and mask is None and (y := attend_one(q, k, v)) is not None:  # a decode step, on the CPU kernel
            return self.out(y)
        k, v = k.to(q.dtype), v.to(q.dtype)  # an fp16 cache under fp32 activations (a no-op otherwise)
        if T == 1 and mask is None:
            # One query per head: the heads of a group become that kv head's queries, so no
            # copy of the keys/values is made. (B, nkv, group, hs)
            y = F.scaled_dot_product_attention(q.reshape(B, self.n_kv_head, group, self.head_dim), k, v)
        else:
            if group > 1:
                k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # (B, nh, S, hs)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1)
        y = y.reshape(B, self.n_head, T, self.head_dim).transpose(1, 2).reshape(B, T, -1)  # (B, T, nh*hs)
        return self.out(y)

    def position(self, qk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Queries and keys (B, T, nh+nkv, hs) made position-aware: the rotary embedding here;
        a family with q/k norms or layers without rotation overrides this one step, and says
        so in `qk_norms()` and `rotary_dims` (what the fused CPU decode step does instead)."""
        return rotate(qk, cos, sin)

    def qk_norms(self) -> tuple[nn.Module, nn.Module] | None:
        """The RMSNorms over each head's queries and keys before the rotation (Qwen3), or None."""
        return None


class SwiGLU(nn.Module):
    gate = "silu"  # the activation of the gate (the fused CPU decode step reads it)

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.hidden = config.intermediate_size
        self.gate_up = nn.Linear(config.n_embd, 2 * config.intermediate_size, bias=False)
        self.down = nn.Linear(config.intermediate_size, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).split(self.hidden, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    attention_class = Attention  # a family that differs only in its attention replaces this

    def __init__(self, config: LlamaConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.n_embd, config.rms_norm_eps)
        self.attn = self.attention_class(config, layer_idx)
        self.mlp_norm = RMSNorm(config.n_embd, config.rms_norm_eps)
        self.mlp = SwiGLU(config)

    def post_norms(self) -> tuple[nn.Module, nn.Module] | None:
        """The norms of the attention's and the MLP's outputs (Gemma 3), or None."""
        return None

    def forward(self, x, cos, sin, input_pos, cache) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, input_pos, cache)
        return x + self.mlp(self.mlp_norm(x))


class Llama(nn.Module):
    block_class = Block
    # None where native_blocks' fused decode step computes this family's blocks; else one line
    # the front ends show once (the family runs on the PyTorch path: correct, slower).
    decode_note: str | None = None
    embed_scale = 1.0  # the token embedding's factor (Gemma 3: sqrt of the width)
    logit_softcap = 0.0  # logits = cap * tanh(logits / cap) where nonzero (the fused step then stops before the head)

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.n_embd)
        self.layers = nn.ModuleList(self.block_class(config, i) for i in range(config.n_layer))
        self.norm = RMSNorm(config.n_embd, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        if not self.embed_tokens.weight.is_meta:
            self.build_rotary_tables()

    def build_rotary_tables(self) -> None:
        """(Re)compute the cos/sin tables for `block_size` positions, in fp32 on the model's
        device (loaders call it after the weights have been assigned from a meta-device build)."""
        device = self.norm.weight.device
        angles = torch.outer(torch.arange(self.config.block_size, dtype=torch.float32), rotary_frequencies(self.config))
        angles = torch.cat((angles, angles), dim=-1).to(device)  # (block_size, hs)
        self.rope_cos, self.rope_sin = angles.cos(), angles.sin()

    def init_weights(self, seed: int | None = None, std: float = 0.02) -> "Llama":
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                elif name.endswith("bias"):
                    p.zero_()
                else:
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
        """Logits (B, T, vocab) for token ids `idx` (B, T) at positions `input_pos` (T,); see
        GPT.forward for the cache and `last_logits_only` contract."""
        B, T = idx.shape
        if input_pos is None:
            if cache is not None:
                raise ValueError("a forward pass with a KV cache needs input_pos (where the tokens go)")
            input_pos = torch.arange(T, device=idx.device)
        x = self.embed_tokens(idx)  # (B, T, C)
        cos = self.rope_cos[input_pos].to(x.dtype).unsqueeze(1)  # (T, 1, hs), broadcast over (B, ., heads)
        sin = self.rope_sin[input_pos].to(x.dtype).unsqueeze(1)
        fused = None
        if cache is not None and T == 1 and self.decode_note is None:
            fused = llama_decode_step(self, x, cos, sin, input_pos, cache)
        if fused is not None:  # a decode step: every block in one call on the CPU kernels
            x, is_logits = fused
            if is_logits:  # and the final norm and head too
                return x
        else:
            for block in self.layers:
                x = block(x, cos, sin, input_pos, cache)
        if last_logits_only:
            x = x[:, -1:, :]
        return self.lm_head(self.norm(x))  # (B, T or 1, vocab)

    def rotary_tables(self) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]:
        """(cos, sin) of every layer, and of the local layers where they differ (Gemma 3), or None."""
        return (self.rope_cos, self.rope_sin), None

    def decode_token(self, token_id: int, position: int, cache: KVCache) -> torch.Tensor | None:
        """Next-token logits (vocab,) after `token_id` at `position` (Python ints), written into
        `cache`, in one call into the CPU kernels; None where that path does not apply, and the
        caller runs forward() with tensors."""
        return llama_decode_token(self, token_id, position, cache) if self.decode_note is None else None

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights counted once


# -- reading configs ------------------------------------------------------------------------------


def config_from_hf(raw: dict, context: int | None, config_class: type = LlamaConfig, **extra) -> LlamaConfig:
    """config.json of LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM -> LlamaConfig
    (a family built on Llama's passes its own `config_class` and the `extra` fields it adds)."""
    if raw.get("mlp_bias"):
        raise ValueError("mlp_bias is not supported")
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}  # v5 / v4 spelling
    if not isinstance(rope, dict):
        raise ValueError(f"rope_scaling must be an object, got {rope!r:.40}")
    rope = dict(rope)
    theta = typed({"rope_theta": rope.pop("rope_theta", raw.get("rope_theta", 10000.0))}, "rope_theta", float)
    kind = rope.get("rope_type", rope.get("type", "default"))
    scaling = None if kind == "default" else {**rope, "rope_type": kind}
    trained = typed(raw, "max_position_embeddings", int, 2048)
    heads = typed(raw, "num_attention_heads", int)
    n_embd = typed(raw, "hidden_size", int)
    qwen2 = raw.get("model_type") == "qwen2"
    return config_class(
        block_size=context_window(trained, context),
        vocab_size=typed(raw, "vocab_size", int),
        n_layer=typed(raw, "num_hidden_layers", int),
        n_head=heads,
        n_kv_head=typed(raw, "num_key_value_heads", int, None) or heads,
        n_embd=n_embd,
        intermediate_size=typed(raw, "intermediate_size", int),
        head_size=typed(raw, "head_dim", int, None) or n_embd // heads,
        rms_norm_eps=typed(raw, "rms_norm_eps", float, 1e-6),
        rope_theta=theta,
        rope_scaling=scaling,
        attention_bias=typed(raw, "attention_bias", bool, qwen2),  # Qwen2 always has q/k/v biases
        tie_embeddings=typed(raw, "tie_word_embeddings", bool, False),
        max_position_embeddings=trained,
        **extra,
    )


def config_from_gguf(g, arch: str, context: int | None, config_class: type = LlamaConfig, **extra) -> LlamaConfig:
    """GGUF metadata (`llama.*`, `qwen2.*` keys) -> LlamaConfig (`config_class`, `extra`: as
    config_from_hf)."""
    meta = g.metadata

    def n(key, default=None):  # an integer (a count or a width)
        return typed(meta, f"{arch}.{key}", int, default, label="metadata ")

    def x(key, default=None):  # a real number
        return typed(meta, f"{arch}.{key}", float, default, label="metadata ")

    heads = n("attention.head_count")
    n_embd = n("embedding_length")
    scaling = None
    kind = meta.get(f"{arch}.rope.scaling.type")
    if kind == "linear":
        scaling = {"rope_type": "linear", "factor": x("rope.scaling.factor")}
    elif kind not in (None, "none"):
        scaling = {"rope_type": kind}  # refused by LlamaConfig with a message naming it
    if "rope_freqs.weight" in g.tensors:  # Llama 3.1's scaling, stored as per-frequency divisors
        scaling = {"rope_type": "factors", "factors": g.tensor("rope_freqs.weight").tolist()}
    trained = n("context_length", 2048)
    return config_class(
        block_size=context_window(trained, context),
        vocab_size=g.tensors["token_embd.weight"].shape[0],
        n_layer=n("block_count"),
        n_head=heads,
        n_kv_head=n("attention.head_count_kv", heads),
        n_embd=n_embd,
        intermediate_size=n("feed_forward_length"),
        head_size=n("attention.key_length", 0) or n("rope.dimension_count", 0) or n_embd // max(heads, 1),
        rms_norm_eps=x("attention.layer_norm_rms_epsilon", 1e-5),
        rope_theta=x("rope.freq_base", 10000.0),
        rope_scaling=scaling,
        attention_bias="blk.0.attn_q.bias" in g.tensors,
        tie_embeddings="output.weight" not in g.tensors,
        max_position_embeddings=trained,
        **extra,
    )


# -- where the tensors are stored -----------------------------------------------------------------


def hf_tensors(config: LlamaConfig) -> TensorMap:
    """Hugging Face names (the `model.` prefix already stripped by the format): q/k/v and
    gate/up are stacked into our fused projections."""
    names = {"embed_tokens.weight": Sources.of("embed_tokens.weight"), "norm.weight": Sources.of("norm.weight"),
             "lm_head.weight": Sources.of("lm_head.weight", optional=config.tie_embeddings)}
    for i in range(config.n_layer):
        src, dst = f"layers.{i}.", f"layers.{i}."
        attn = src + "self_attn."
        names[dst + "attn.qkv.weight"] = Sources.of(*(attn + f"{n}_proj.weight" for n in "qkv"))
        names[dst + "attn.qkv.bias"] = Sources.of(*(attn + f"{n}_proj.bias" for n in "qkv"), optional=True)
        names[dst + "attn.out.weight"] = Sources.of(attn + "o_proj.weight")
        names[dst + "mlp.gate_up.weight"] = Sources.of(src + "mlp.gate_proj.weight", src + "mlp.up_proj.weight")
        names[dst + "mlp.down.weight"] = Sources.of(src + "mlp.down_proj.weight")
        names[dst + "attn_norm.weight"] = Sources.of(src + "input_layernorm.weight")
        names[dst + "mlp_norm.weight"] = Sources.of(src + "post_attention_layernorm.weight")
    return names


def gguf_tensors(config: LlamaConfig, arch: str, permuted: bool | None = None) -> TensorMap:
    """llama.cpp's names. Only `llama` files (and families its converter writes as Llama's, say
    `permuted`) have their query/key rows reordered (Qwen2 files keep Hugging Face's order)."""
    permuted = arch == "llama" if permuted is None else permuted
    names = {"embed_tokens.weight": Sources.of("token_embd.weight"), "norm.weight": Sources.of("output_norm.weight"),
             "lm_head.weight": Sources.of("output.weight", optional=config.tie_embeddings)}
    for i in range(config.n_layer):
        b, o = f"blk.{i}.", f"layers.{i}."
        q = Part(b + "attn_q.weight", config.n_head if permuted else 0)
        k = Part(b + "attn_k.weight", config.n_kv_head if permuted else 0)
        names[o + "attn.qkv.weight"] = Sources((q, k, Part(b + "attn_v.weight")))
        names[o + "attn.qkv.bias"] = Sources.of(*(b + f"attn_{n}.bias" for n in "qkv"), optional=True)
        names[o + "attn.out.weight"] = Sources.of(b + "attn_output.weight")
        names[o + "mlp.gate_up.weight"] = Sources.of(b + "ffn_gate.weight", b + "ffn_up.weight")
        names[o + "mlp.down.weight"] = Sources.of(b + "ffn_down.weight")
        names[o + "attn_norm.weight"] = Sources.of(b + "attn_norm.weight")
        names[o + "mlp_norm.weight"] = Sources.of(b + "ffn_norm.weight")
    return names


FAMILY = Family(
    name="llama",
    declared_as=("llama", "mistral", "qwen2", "smollm", "tinyllama"),
    gguf_architectures=("llama", "qwen2"),
    config_class=LlamaConfig,
    module_class=Llama,
    config_from_hf=config_from_hf,
    config_from_gguf=config_from_gguf,
    hf_tensors=hf_tensors,
    gguf_tensors=gguf_tensors,
    after_load=lambda model: model.build_rotary_tables(),
)
