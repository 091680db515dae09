"""GGUF metadata and tensor names -> our configs, state dicts and checkpoint metadata.

llama.cpp names: `token_embd`, `blk.N.attn_q/k/v/output`, `blk.N.ffn_gate/up/down`,
`blk.N.attn_norm`, `blk.N.ffn_norm`, `output_norm`, `output` (absent when tied); GPT-2 files
have `position_embd` and a fused `attn_qkv`. Metadata keys are prefixed by the architecture
(`llama.context_length`, `qwen2.attention.head_count_kv`, ...).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .config import GPTConfig
from .llama import LlamaConfig
from .registry import context_window

_SAMPLING = {"temp": "temperature", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p",
             "penalty_repeat": "repetition_penalty", "penalty_last_n": "repetition_window"}


def typed(g, key: str, kind: type, default=None):
    """Metadata value `key`, which must be of `kind` (int, float or bool); never coerced.

    GGUF stores typed values, so a string or a float where a count belongs is a damaged or
    hostile file: int("12") or int(2.5) would build a model other than the one described."""
    value = g.field(key, default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)  # an integer is a number; only the reverse would lose something
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)) \
            or (kind is float and not math.isfinite(value)):
        raise ValueError(f"metadata {key} must be {_KIND_NAMES[kind]}, got {value!r:.40}")
    return value


_KIND_NAMES = {int: "an integer", float: "a finite number", bool: "true or false"}


def config_from_metadata(g, arch: str, context: int | None):
    def f(key, default=None):
        return g.field(f"{arch}.{key}", default)

    def n(key, default=None):  # an integer (a count or a width)
        return typed(g, f"{arch}.{key}", int, default)

    def x(key, default=None):  # a real number
        return typed(g, f"{arch}.{key}", float, default)

    vocab = g.tensors["token_embd.weight"][1][0]
    tied = "output.weight" not in g.tensors
    if arch == "gpt2":  # the window is capped after loading: position embeddings have fixed rows
        return GPTConfig(
            block_size=n("context_length"), vocab_size=vocab, n_layer=n("block_count"),
            n_head=n("attention.head_count"), n_embd=n("embedding_length"), bias=True,
            layer_norm_eps=x("attention.layer_norm_epsilon", 1e-5), tie_embeddings=tied,
        )
    heads = n("attention.head_count")
    n_embd = n("embedding_length")
    scaling = None
    kind = f("rope.scaling.type")
    if kind == "linear":
        scaling = {"rope_type": "linear", "factor": x("rope.scaling.factor")}
    elif kind not in (None, "none"):
        scaling = {"rope_type": kind}  # refused by LlamaConfig with a message naming it
    if "rope_freqs.weight" in g.tensors:  # Llama 3.1's scaling, stored as per-frequency divisors
        scaling = {"rope_type": "factors", "factors": g.tensor("rope_freqs.weight").tolist()}
    trained = n("context_length", 2048)
    return LlamaConfig(
        block_size=context_window(trained, context),
        vocab_size=vocab,
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
        tie_embeddings=tied,
        max_position_embeddings=trained,
    )


def unpermute_rotary(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's reordering of q/k rows: within each head it interleaves the two halves
    (row pairs 2i, 2i+1 rotate together); we keep halves (rows i and i + hs/2)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def state_dict(g, arch: str, config, progress=None) -> dict[str, torch.Tensor]:
    """Our tensors, built one at a time (so that the dequantized parts of a fused tensor are
    freed as soon as it is built: the peak memory stays near the model's own size)."""
    names = _gpt2_names(config) if arch == "gpt2" else _llama_names(config)
    sd = {}
    for n, (ours, sources) in enumerate(names.items()):
        if progress is not None and n % 8 == 0:
            progress("dequantizing weights", n / len(names))
        if not all(s in g.tensors for s in sources):
            if ours.endswith(".bias") or ours == "lm_head.weight":
                continue  # optional: biases, and the output projection when tied
            missing = next(s for s in sources if s not in g.tensors)
            raise KeyError(f"tensor {missing!r} is missing")
        parts = [g.tensor(s) for s in sources]
        if arch == "llama" and ".attn.qkv." in ours:  # only llama's files are reordered
            parts[0] = unpermute_rotary(parts[0], config.n_head)
            parts[1] = unpermute_rotary(parts[1], config.n_kv_head)
        sd[ours] = parts[0] if len(parts) == 1 else torch.cat(parts)
        del parts
    if progress is not None:
        progress("weights read", 1.0)
    return sd


def _llama_names(config: LlamaConfig) -> dict[str, list[str]]:
    names = {"embed_tokens.weight": ["token_embd.weight"], "norm.weight": ["output_norm.weight"],
             "lm_head.weight": ["output.weight"]}
    for i in range(config.n_layer):
        b, o = f"blk.{i}.", f"layers.{i}."
        names[o + "attn_norm.weight"] = [b + "attn_norm.weight"]
        names[o + "attn.qkv.weight"] = [b + f"attn_{n}.weight" for n in "qkv"]
        names[o + "attn.qkv.bias"] = [b + f"attn_{n}.bias" for n in "qkv"]
        names[o + "attn.out.weight"] = [b + "attn_output.weight"]
        names[o + "mlp_norm.weight"] = [b + "ffn_norm.weight"]
        names[o + "mlp.gate_up.weight"] = [b + "ffn_gate.weight", b + "ffn_up.weight"]
        names[o + "mlp.down.weight"] = [b + "ffn_down.weight"]
    return names


def _gpt2_names(config: GPTConfig) -> dict[str, list[str]]:
    names = {"transformer.wte.weight": ["token_embd.weight"], "transformer.wpe.weight": ["position_embd.weight"],
             "transformer.ln_f.weight": ["output_norm.weight"], "transformer.ln_f.bias": ["output_norm.bias"],
             "lm_head.weight": ["output.weight"]}
    pairs = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm",
             "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
    for i in range(config.n_layer):
        for ours, theirs in pairs.items():
            for kind in ("weight", "bias"):
                names[f"transformer.h.{i}.{ours}.{kind}"] = [f"blk.{i}.{theirs}.{kind}"]
    return names


def metadata(g, path: Path) -> dict:
    """Checkpoint metadata: name, the embedded tokenizer as a spec, the chat template."""
    f = g.field
    tokens = f("tokenizer.ggml.tokens")
    meta: dict = {"name": path.stem, "architecture": f("general.architecture")}
    if tokens:
        stop = [f(k) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")]
        meta["tokenizer"] = {
            "type": "gguf",
            "model": f("tokenizer.ggml.model"),
            "pre": f("tokenizer.ggml.pre", "default"),
            "tokens": tokens,
            "token_types": f("tokenizer.ggml.token_type"),
            "merges": f("tokenizer.ggml.merges"),
            "scores": f("tokenizer.ggml.scores"),
            "bos_id": f("tokenizer.ggml.bos_token_id"),
            "eos_id": f("tokenizer.ggml.eos_token_id"),
            "add_bos_token": typed(g, "tokenizer.ggml.add_bos_token", bool, False),
            "add_space_prefix": typed(g, "tokenizer.ggml.add_space_prefix", bool, True),
            "stop_ids": [int(i) for i in stop if isinstance(i, int)],
        }
    sampling = {ours: f(f"general.sampling.{theirs}") for theirs, ours in _SAMPLING.items()}
    sampling = {k: v for k, v in sampling.items() if isinstance(v, (int, float))}
    if sampling:  # the recommended values some files carry
        meta["sampling"] = sampling
    if isinstance(f("tokenizer.chat_template"), str):
        meta["chat_template_jinja"] = f("tokenizer.chat_template")
    return meta
