"""`open_tokenizer(spec)`: the tokenizer that a checkpoint's tokenizer spec names.

    {"type": "gpt2"}                          GPT-2's BPE, shipped in the package (tokenizer.py)
    {"type": "bpe", "ranks": [...], ...}      a checkpoint's own byte-level BPE (tokenizer.py)
    {"type": "huggingface", "path": ...}      a model folder's tokenizer.json (hf_tokenizer.py)
    {"type": "gguf", "tokens": [...], ...}    the vocabulary stored in a GGUF file (hf_tokenizer.py)

No spec means GPT-2's (nanoGPT checkpoints carry none). A spec that cannot be used is a
TokenizerError (a ValueError) with a one-line message.
"""

from __future__ import annotations

from .hf_tokenizer import HFTokenizer
from .tokenizer import Tokenizer, TokenizerError


def open_tokenizer(spec: dict | None) -> Tokenizer | HFTokenizer:
    spec = spec or {"type": "gpt2"}
    if not isinstance(spec, dict):
        raise TokenizerError(f"bad tokenizer spec (a {type(spec).__name__}, not an object)")
    kind = spec.get("type")
    if kind == "gpt2":
        return Tokenizer.gpt2()
    if kind == "bpe":
        return Tokenizer.bpe(spec)
    if kind in ("huggingface", "gguf"):  # Hugging Face `tokenizers`: Llama-family models
        return HFTokenizer.from_spec(spec)
    raise TokenizerError(f"unknown tokenizer type {kind!r}; expected 'gpt2', 'bpe', 'huggingface' or 'gguf'")
