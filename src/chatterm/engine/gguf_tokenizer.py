"""The tokenizer embedded in a GGUF file, rebuilt as a Hugging Face `tokenizers` object.

`tokenizer.ggml.model` says which kind:
- "gpt2": byte-level BPE (GPT-2, SmolLM2, Qwen2, Llama 3): the vocabulary and merges as stored,
  pre-tokenized by the regex that `tokenizer.ggml.pre` names;
- "llama": a SentencePiece vocabulary (Llama 2, TinyLlama, Mistral): a BPE with byte fallback
  whose merges are derived from the vocabulary, ranked by piece id (ids follow the scores).
Token types: 3 (control) become special added tokens, 4 (user-defined) plain added tokens.

A SentencePiece vocabulary's merges take seconds to derive in Python (Gemma 3's 262k pieces:
513k merges, ~1.3 s), so they are kept in the cache folder (`tokenizers/<hash>.merges`, keyed by
the pieces and their types) and read back, checked, on the next load (~0.2 s).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..cache_folder import cache_folder
from .tokenizer import TokenizerError

# Pre-tokenization regexes by `tokenizer.ggml.pre`; anything else uses GPT-2's.
_LETTERS_FIRST = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}%s| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
PRE_PATTERNS = {
    "llama-bpe": _LETTERS_FIRST % "{1,3}",  # Llama 3: numbers in groups of up to three digits
    "llama3": _LETTERS_FIRST % "{1,3}",
    "qwen2": _LETTERS_FIRST % "",  # one digit per token
}
CONTROL, USER_DEFINED = 3, 4
MAX_MERGED_PIECE = 256  # characters; see _sentencepiece_merges


def tokenizer_from_gguf(spec: dict):
    """A `tokenizers.Tokenizer` for the spec (see model/gguf_names.metadata)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    tokens: list[str] = spec["tokens"]
    types = spec.get("token_types") or [1] * len(tokens)
    vocab = {token: i for i, token in enumerate(tokens)}
    kind = spec.get("model")
    if kind == "gpt2":
        merges = [tuple(m.split(" ", 1)) for m in spec.get("merges") or []]
        pre = spec.get("pre") or "default"
        tok = Tokenizer(models.BPE(vocab, merges, ignore_merges=pre in ("llama-bpe", "llama3")))
        if pre in PRE_PATTERNS:
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(PRE_PATTERNS[pre]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ])
        elif pre == "smollm":  # digits one by one, then GPT-2's regex
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ])
        else:
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
    elif kind == "llama":
        unk = next((t for t, k in zip(tokens, types) if k == 2), None)
        tok = Tokenizer(models.BPE(vocab, _cached_merges(tokens, types), unk_token=unk, byte_fallback=True, fuse_unk=True))
        steps = [normalizers.Replace(" ", "▁")]
        if spec.get("add_space_prefix", True):
            steps.insert(0, normalizers.Prepend("▁"))
        tok.normalizer = normalizers.Sequence(steps)
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    else:
        raise TokenizerError(f"GGUF tokenizer model {kind!r} is not supported (supported: gpt2, llama)")
    special = [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == CONTROL]
    plain = [AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == USER_DEFINED]
    if special:
        tok.add_special_tokens(special)
    if plain:
        tok.add_tokens(plain)
    return tok


def _sentencepiece_merges(tokens: list[str], types: list[int]) -> np.ndarray:
    """Every split of a normal piece into two pieces of the vocabulary is a merge; merges that
    build earlier (higher-scored) pieces come first, as SentencePiece's BPE applies them. As
    (left id, right id) rows, int32.

    Only pieces of up to `MAX_MERGED_PIECE` characters get merges, so the work is linear in the
    vocabulary's size: a piece of n characters has n - 1 splits of O(n) each, and one piece of a
    megabyte took minutes. Real vocabularies' pieces are 16 characters at most (SentencePiece's
    default), a few dozen in odd ones; a longer piece is kept for decoding and never produced by
    encoding, as text never merges into it."""
    ids = {t: i for i, t in enumerate(tokens)}
    ranked = []
    for i, (piece, kind) in enumerate(zip(tokens, types)):
        if kind != 1 or not 2 <= len(piece) <= MAX_MERGED_PIECE:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in ids and right in ids:
                ranked.append((i, ids[left], ids[right]))
    ranked.sort()
    return np.array([(left, right) for _, left, right in ranked], dtype="<i4").reshape(-1, 2)


_MAGIC = b"chatterm merges 1\n"  # then a sha256 of the key and the pairs, then int32 pairs (left, right id)


def _cached_merges(tokens: list[str], types: list[int]) -> list[tuple[str, str]]:
    """_sentencepiece_merges, from the cache folder where an earlier load left them, as pieces. A
    file that is short, foreign or damaged (its digest covers these pieces and its pairs) is
    derived again and rewritten; a folder that cannot be written only costs the next load the time."""
    key = hashlib.sha256(MAX_MERGED_PIECE.to_bytes(4, "little") + bytes(t & 0xFF for t in types)
                         + "\0".join(tokens).encode("utf-8", "surrogatepass")).digest()
    path = cache_folder("tokenizers") / f"{key.hex()[:32]}.merges"
    try:
        data = path.read_bytes()
    except OSError:
        data = b""
    head = len(_MAGIC) + 32
    payload = data[head:]
    pairs = None
    if data[:len(_MAGIC)] == _MAGIC and len(payload) % 8 == 0 and data[len(_MAGIC):head] == hashlib.sha256(key + payload).digest():
        pairs = np.frombuffer(payload, dtype="<i4").reshape(-1, 2)
        if pairs.size and (pairs.min() < 0 or pairs.max() >= len(tokens)):
            pairs = None
    if pairs is None:
        pairs = _sentencepiece_merges(tokens, types)
        payload = pairs.tobytes()
        try:
            atomic_write(path, lambda tmp: Path(tmp).write_bytes(_MAGIC + hashlib.sha256(key + payload).digest() + payload))
        except OSError:
            pass
    # two flat lists of ints: a list per pair would be 513k objects for the collector to scan
    return [(tokens[left], tokens[right]) for left, right in zip(pairs[:, 0].tolist(), pairs[:, 1].tolist())]
