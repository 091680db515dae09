"""Model families: one file each (config, tensor names, module), and the one table loaders read.

A family file (`gpt2.py`, `llama.py`) holds everything a family is: its config dataclass, how
that config is read from a Hugging Face `config.json` and from GGUF metadata, which stored
tensors make each of our tensors (`TensorMap`), and the torch module. Formats (`model/formats/`)
only yield named tensors; `model/loader.py` builds the module on the meta device and puts each
tensor straight into its final layer.

Adding a family: a new file with a `FAMILY = Family(...)`, and its name in `_MODULES` below. A
family close to another is written as the difference (qwen3.py, smollm3.py, gemma3.py and phi3.py
subclass llama.py's config and module, replace its attention's `position` step or its block, and
reuse its config readers and tensor maps), as transformers' modular files do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Callable

from ..errors import CheckpointError

# Without a --context setting, a model trained for a longer window runs with this one: the KV
# cache is allocated up front, and 128k positions of Llama 3.1 8B would take 16 GB.
DEFAULT_CONTEXT_CAP = 4096


@dataclass(frozen=True)
class Part:
    """One stored tensor that makes (part of) one of ours. `unpermute_heads`: llama.cpp stores a
    `llama` model's query/key rows with each head's rotary pairs interleaved; this many heads are
    put back in Hugging Face's order (rows i and i + head_dim/2 pair), a pure row permutation, so
    it works on quantized rows too. `offset`: added to every value (a float tensor): Gemma's
    Hugging Face norms store w of a scale 1 + w, llama.cpp's files store 1 + w."""

    name: str
    unpermute_heads: int = 0
    offset: float = 0.0


@dataclass(frozen=True)
class Sources:
    """The stored tensors whose rows, stacked, are one of our tensors (q, k, v -> qkv)."""

    parts: tuple[Part, ...]
    optional: bool = False  # a bias, or an output projection tied to the embedding

    @classmethod
    def of(cls, *names: str, optional: bool = False) -> "Sources":
        return cls(tuple(Part(n) for n in names), optional)


TensorMap = dict[str, Sources]  # our tensor name -> where its rows are stored


@dataclass(frozen=True)
class Family:
    name: str  # our name for the family
    declared_as: tuple[str, ...]  # Hugging Face model_type / architectures names meaning this family
    gguf_architectures: tuple[str, ...]  # GGUF general.architecture values meaning this family
    config_class: type
    module_class: type
    config_from_hf: Callable[[dict, int | None], object]  # (config.json, context cap) -> config
    config_from_gguf: Callable[[object, str, int | None], object]  # (GGUFFile, architecture, cap) -> config
    hf_tensors: Callable[[object], TensorMap] | None  # config -> names in a Hugging Face folder (None: read another way)
    gguf_tensors: Callable[[object, str], TensorMap]  # (config, architecture) -> names in a GGUF file
    after_load: Callable[[object], None] = field(default=lambda model: None)  # e.g. rotary tables


_MODULES = ("gpt2", "llama", "qwen3", "smollm3", "gemma3", "phi3")


def families() -> dict[str, Family]:
    """name -> Family, every family file's FAMILY."""
    return {f.name: f for f in (import_module(f".{m}", __name__).FAMILY for m in _MODULES)}


def family_for(declared: str | None, where: Path) -> Family:
    """The family a Hugging Face checkpoint declares (`model_type`, `LlamaForCausalLM`)."""
    name = (declared or "").lower()
    for suffix in ("forcausallm", "lmheadmodel", "model"):
        if name.endswith(suffix) and name != suffix:
            name = name[: -len(suffix)]
            break
    for fam in families().values():
        if name in fam.declared_as:
            return fam
    known = ", ".join(sorted(n for f in families().values() for n in f.declared_as))
    raise CheckpointError(f"{where}: architecture {declared!r} is not supported (supported: {known})")


def family_for_gguf(declared, where: Path) -> Family:
    """The family of a GGUF file's `general.architecture`."""
    for fam in families().values():
        if declared in fam.gguf_architectures:
            return fam
    known = ", ".join(a for f in families().values() for a in f.gguf_architectures)
    raise CheckpointError(
        f"{where}: GGUF architecture {str(declared)[:40]!r} is not supported (supported: {known}); "
        "llama.cpp's llama-server can serve it, and `chatterm http://127.0.0.1:8080` talks to that"
    )


def family_of(model) -> Family:
    """The family of a built module (its own class first: a family built on Llama's module is
    also a Llama)."""
    known = families().values()
    for fam in (*(f for f in known if type(model) is f.module_class), *known):
        if isinstance(model, fam.module_class):
            return fam
    raise TypeError(f"{type(model).__name__} is not a model family")


def context_window(trained: int, context: int | None) -> int:
    """The window a model runs with: what it was trained for, capped by the user's setting (or
    by DEFAULT_CONTEXT_CAP when there is none)."""
    cap = context if context else DEFAULT_CONTEXT_CAP
    return max(1, min(int(trained), int(cap)))


_REQUIRED = object()
_KIND_NAMES = {int: "an integer", float: "a finite number", bool: "true or false"}


def typed(raw: dict, key: str, kind: type, default=_REQUIRED, *, label: str = ""):
    """`raw[key]` if it has the type `kind` (int, float or bool; an int is a float, a bool is
    neither), else ValueError naming the key: a config from a stranger is never coerced, so
    "false" is not true and 2.5 layers are not 2. A missing key gives `default` (KeyError
    without). Used for config.json values and GGUF metadata alike."""
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
        raise ValueError(f"{label}{key} must be {_KIND_NAMES[kind]}, got {value!r:.40}")
    return float(value) if kind is float else value
