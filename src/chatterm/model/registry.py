"""The architecture registry: each model family as a config class, a torch module and the
translators from Hugging Face's config and weight names to ours.

Loaders (hf_folder.py, gguf_format.py, checkpoint.py) find the family from what a checkpoint
declares (`model_type`, `architectures`, GGUF `general.architecture`) with `architecture_for`,
translate, and build the module with `build_model`, which checks every tensor's name and shape
before assigning the weights without a copy. An undeclared or unknown family is one line naming
it. Adding a family is one `Architecture` entry and its module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from . import state_dict as sdmod
from .config import GPTConfig
from .errors import CheckpointError
from .gpt import GPT
from .llama import Llama, LlamaConfig

# Without a --context setting, a model trained for a longer window runs with this one: the KV
# cache is allocated up front, and 128k positions of Llama 3.1 8B would take 16 GB.
DEFAULT_CONTEXT_CAP = 4096


@dataclass(frozen=True)
class Architecture:
    name: str  # our name for the family
    declared_as: tuple[str, ...]  # model_type / GGUF architecture names that mean this family
    config_class: type
    module_class: type[nn.Module]
    config_from_hf: Callable[[dict, int | None], object]  # (config.json, context cap) -> config
    state_dict_from_hf: Callable[[dict, object], dict]  # (HF tensors, config) -> our tensors


# -- GPT-2 ---------------------------------------------------------------------------------------


def _gpt2_config(raw: dict, context: int | None) -> GPTConfig:
    cfg = sdmod.normalize_config_keys(raw)
    cfg.setdefault("bias", True)
    return GPTConfig.from_dict(cfg)


# -- Llama family -------------------------------------------------------------------------------


_REQUIRED = object()


def _typed(raw: dict, key: str, kind: type, default=_REQUIRED):
    """`raw[key]` if it has the JSON type `kind` (int, float or bool; an int is a float, a bool
    is neither), else ValueError naming the key: a config from a stranger is never coerced, so
    "false" is not true and 2.5 layers are not 2. A missing key gives `default` (KeyError without)."""
    value = raw[key] if default is _REQUIRED else raw.get(key, default)
    if value is default and default is not _REQUIRED:
        return value
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok:
        raise ValueError(f"{key} must be {_KIND_NAMES[kind]}, got {value!r:.40}")
    return float(value) if kind is float else value


_KIND_NAMES = {int: "an integer", float: "a finite number", bool: "true or false"}


def _llama_config(raw: dict, context: int | None) -> LlamaConfig:
    """config.json of LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM -> LlamaConfig."""
    if raw.get("mlp_bias"):
        raise ValueError("mlp_bias is not supported")
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}  # v5 / v4 spelling
    if not isinstance(rope, dict):
        raise ValueError(f"rope_scaling must be an object, got {rope!r:.40}")
    rope = dict(rope)
    theta = _typed({"rope_theta": rope.pop("rope_theta", raw.get("rope_theta", 10000.0))}, "rope_theta", float)
    kind = rope.get("rope_type", rope.get("type", "default"))
    scaling = None if kind == "default" else {**rope, "rope_type": kind}
    trained = _typed(raw, "max_position_embeddings", int, 2048)
    heads = _typed(raw, "num_attention_heads", int)
    n_embd = _typed(raw, "hidden_size", int)
    qwen2 = raw.get("model_type") == "qwen2"
    return LlamaConfig(
        block_size=context_window(trained, context),
        vocab_size=_typed(raw, "vocab_size", int),
        n_layer=_typed(raw, "num_hidden_layers", int),
        n_head=heads,
        n_kv_head=_typed(raw, "num_key_value_heads", int, None) or heads,
        n_embd=n_embd,
        intermediate_size=_typed(raw, "intermediate_size", int),
        head_size=_typed(raw, "head_dim", int, None) or n_embd // heads,
        rms_norm_eps=_typed(raw, "rms_norm_eps", float, 1e-6),
        rope_theta=theta,
        rope_scaling=scaling,
        attention_bias=_typed(raw, "attention_bias", bool, qwen2),  # Qwen2 always has q/k/v biases
        tie_embeddings=_typed(raw, "tie_word_embeddings", bool, False),
        max_position_embeddings=trained,
    )


def _llama_state_dict(sd: dict, config: LlamaConfig) -> dict:
    """HF names (model.layers.N.self_attn.q_proj.weight, ...) -> ours, fusing q/k/v and gate/up."""
    sd = {k.removeprefix("model.") if k.startswith("model.") else k: v for k, v in sdmod.strip_prefixes(sd).items()}
    out = {"embed_tokens.weight": sd["embed_tokens.weight"], "norm.weight": sd["norm.weight"]}
    if "lm_head.weight" in sd:
        out["lm_head.weight"] = sd["lm_head.weight"]
    for i in range(config.n_layer):
        src, dst = f"layers.{i}.", f"layers.{i}."
        attn = src + "self_attn."
        out[dst + "attn.qkv.weight"] = torch.cat([sd[attn + f"{n}_proj.weight"] for n in "qkv"])
        if attn + "q_proj.bias" in sd:
            out[dst + "attn.qkv.bias"] = torch.cat([sd[attn + f"{n}_proj.bias"] for n in "qkv"])
        out[dst + "attn.out.weight"] = sd[attn + "o_proj.weight"]
        out[dst + "mlp.gate_up.weight"] = torch.cat([sd[src + "mlp.gate_proj.weight"], sd[src + "mlp.up_proj.weight"]])
        out[dst + "mlp.down.weight"] = sd[src + "mlp.down_proj.weight"]
        out[dst + "attn_norm.weight"] = sd[src + "input_layernorm.weight"]
        out[dst + "mlp_norm.weight"] = sd[src + "post_attention_layernorm.weight"]
    return out


ARCHITECTURES: dict[str, Architecture] = {
    "gpt2": Architecture("gpt2", ("gpt2",), GPTConfig, GPT, _gpt2_config, lambda sd, cfg: sdmod.from_hf(sd)),
    "llama": Architecture(
        "llama",
        ("llama", "mistral", "qwen2", "smollm", "tinyllama"),
        LlamaConfig,
        Llama,
        _llama_config,
        _llama_state_dict,
    ),
}


def architecture_for(declared: str | None, where: Path) -> Architecture:
    """The family a checkpoint declares (`model_type`, `LlamaForCausalLM`, GGUF architecture)."""
    name = (declared or "").lower()
    for suffix in ("forcausallm", "lmheadmodel", "model"):
        if name.endswith(suffix) and name != suffix:
            name = name[: -len(suffix)]
            break
    for arch in ARCHITECTURES.values():
        if name in arch.declared_as:
            return arch
    known = ", ".join(sorted(n for a in ARCHITECTURES.values() for n in a.declared_as))
    raise CheckpointError(f"{where}: architecture {declared!r} is not supported (supported: {known})")


def context_window(trained: int, context: int | None) -> int:
    """The window a model runs with: what it was trained for, capped by the user's setting (or
    by DEFAULT_CONTEXT_CAP when there is none)."""
    cap = context if context else DEFAULT_CONTEXT_CAP
    return max(1, min(int(trained), int(cap)))


def cap_context(model: nn.Module, context: int | None) -> None:
    """Shrink a loaded model's window to `context` positions (a no-op when it is already smaller)."""
    if context and context < model.config.block_size:
        model.config = replace(model.config, block_size=int(context))
        if isinstance(model, Llama):
            model.build_rotary_tables()


def build_model(arch: Architecture, config, sd: dict, where: Path) -> nn.Module:
    """The module for `config` with the tensors of `sd` assigned (no copy), after checking that
    every name and shape is what the config needs."""
    with torch.device("meta"):
        model = arch.module_class(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if config.tie_embeddings:
        sd = {k: v for k, v in sd.items() if k != "lm_head.weight"}
        expected.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing:
        raise CheckpointError(f"{where}: weights are missing {len(missing)} tensors, e.g. {missing[0]!r}")
    if unexpected:
        raise CheckpointError(f"{where}: unexpected tensor {unexpected[0]!r} (and {len(unexpected) - 1} more)")
    for key, shape in expected.items():
        if tuple(sd[key].shape) != tuple(shape):
            raise CheckpointError(f"{where}: tensor {key!r} has shape {tuple(sd[key].shape)}, the config needs {tuple(shape)}")
    model.load_state_dict(sd, strict=False, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight if isinstance(model, Llama) else model.transformer.wte.weight
    if isinstance(model, Llama):
        model.build_rotary_tables()
    return model
