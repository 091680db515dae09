"""Translate the state dicts of other GPT implementations into ours.

Every loader ends up with a dict of tensors named like our `GPT` module (which uses nanoGPT's
names). This module knows the other naming schemes: Hugging Face GPT-2 (Conv1D weights stored
transposed), compiled/DataParallel prefixes, and the textbook `GPTModel` (tok_emb, trf_blocks,
separate W_query/W_key/W_value). It also infers the shape of a model from its weights.
"""

from __future__ import annotations

import re

import torch

from ..families.gpt2 import GPTConfig

_PREFIXES = ("_orig_mod.", "module.")
# Hugging Face stores these as Conv1D: weight shaped (in, out), the transpose of nn.Linear's.
# The one list of them (the benchmark's transformers model uses it too).
HF_CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers some implementations save that are not weights (causal masks).
_IGNORED = re.compile(r"(^|\.)attn\.(bias|masked_bias)$")


def strip_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in sd.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        out[key] = value
    return out


def from_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face GPT2LMHeadModel / GPT2Model keys -> ours."""
    out = {}
    for key, value in strip_prefixes(sd).items():
        if not key.startswith(("transformer.", "lm_head.")):
            key = "transformer." + key  # GPT2Model has no "transformer." prefix
        if _IGNORED.search(key):
            continue
        if key.endswith(HF_CONV1D_WEIGHTS):
            value = value.t().contiguous()
        out[key] = value
    return out


def is_textbook(sd: dict[str, torch.Tensor]) -> bool:
    return "tok_emb.weight" in sd


def from_textbook(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The textbook `GPTModel` (tok_emb, pos_emb, trf_blocks.N.att.W_query, ...) -> ours."""
    out = {
        "transformer.wte.weight": sd["tok_emb.weight"],
        "transformer.wpe.weight": sd["pos_emb.weight"],
        "transformer.ln_f.weight": sd["final_norm.scale"],
        "transformer.ln_f.bias": sd["final_norm.shift"],
        "lm_head.weight": sd["out_head.weight"],
    }
    n_layer = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("trf_blocks."))
    for i in range(n_layer):
        src, dst = f"trf_blocks.{i}.", f"transformer.h.{i}."
        q, k, v = (sd[src + f"att.W_{n}.weight"] for n in ("query", "key", "value"))
        out[dst + "attn.c_attn.weight"] = torch.cat([q, k, v], dim=0)
        if src + "att.W_query.bias" in sd:
            out[dst + "attn.c_attn.bias"] = torch.cat([sd[src + f"att.W_{n}.bias"] for n in ("query", "key", "value")])
        else:  # qkv_bias=False in the textbook's default config; the rest of the model has biases
            out[dst + "attn.c_attn.bias"] = torch.zeros(q.size(0) * 3, dtype=q.dtype)
        pairs = {
            "att.out_proj": "attn.c_proj",
            "ff.layers.0": "mlp.c_fc",
            "ff.layers.2": "mlp.c_proj",
        }
        for a, b in pairs.items():
            out[dst + b + ".weight"] = sd[src + a + ".weight"]
            out[dst + b + ".bias"] = sd[src + a + ".bias"]
        for a, b in (("norm1", "ln_1"), ("norm2", "ln_2")):
            out[dst + b + ".weight"] = sd[src + a + ".scale"]
            out[dst + b + ".bias"] = sd[src + a + ".shift"]
    return out


def infer_config(sd: dict[str, torch.Tensor], n_head: int | None, **overrides) -> GPTConfig:
    """Read every shape but the head count from the weights themselves."""
    vocab_size, n_embd = sd["transformer.wte.weight"].shape
    block_size = sd["transformer.wpe.weight"].shape[0]
    n_layer = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("transformer.h."))
    bias = "transformer.h.0.attn.c_attn.bias" in sd
    tied = "lm_head.weight" not in sd or torch.equal(sd["lm_head.weight"], sd["transformer.wte.weight"])
    if n_head is None:
        raise ValueError("the number of attention heads cannot be read from the weights")
    values = dict(
        vocab_size=int(vocab_size),
        n_embd=int(n_embd),
        block_size=int(block_size),
        n_layer=n_layer,
        n_head=n_head,  # from a sidecar JSON: checked by GPTConfig, never coerced (int("2"), int(True))
        bias=bias,
        tie_embeddings=bool(tied),
    )
    values.update({k: v for k, v in overrides.items() if v is not None})
    return GPTConfig(**values)
