"""Text <-> token ids: what every tokenizer offers, and the tiktoken one, always offline.

Every tokenizer offers `encode`, `encode_marked` (template text), `decode`, `decode_bytes`,
`token_bytes` (for the streaming detokenizer), `token_text`, `n_vocab`, `eot_id`, `bos_id`, `add_bos`,
`stop_ids` (every id that ends a reply), `special_tokens`, `spec` and `key`. `open_tokenizer`
(tokenizers.py) builds the one a checkpoint's tokenizer spec names: this module's `Tokenizer`, or
`HFTokenizer` (hf_tokenizer.py: Hugging Face `tokenizer.json` files and GGUF vocabularies).

`Tokenizer` runs tiktoken, for two kinds of spec (small JSON-able dicts stored in checkpoints):
- `{"type": "gpt2"}`: OpenAI's GPT-2 BPE, read from the `vocab.bpe`/`encoder.json` files shipped
  inside this package and checked against tiktoken's own sha256 hashes (no download, ever);
- `{"type": "bpe", "pat_str": ..., "ranks": [base64 token bytes, in rank order],
  "special_tokens": {"<|endoftext|>": id}}`: a checkpoint's own byte-level BPE, so small models
  can have small vocabularies.

User text is encoded with `encode_ordinary`: typing "<|endoftext|>" in a chat is just text.

`key` names the vocabulary by its content (a sha256 of what decides the ids: the pattern, the
ranks, the special tokens), so token ids cached under one tokenizer are recognised as valid for
another built from the same spec, and never for a different one.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from pathlib import Path

import tiktoken

ENDOFTEXT = "<|endoftext|>"
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
# GPT-2's pre-tokenization pattern (tiktoken's r50k); also the default for our own BPEs.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
_BPE_DIR = Path(__file__).parent / "gpt2_bpe"
_UTF8_BYTES = [b for b in range(256) if b not in (0xC0, 0xC1) and b < 0xF5]  # bytes UTF-8 text can hold


class TokenizerError(ValueError):
    """A tokenizer spec that cannot be used."""


class Tokenizer:
    def __init__(self, encoding: tiktoken.Encoding, spec: dict) -> None:
        self.encoding = encoding
        self.spec = spec
        self.eot_id: int | None = encoding._special_tokens.get(ENDOFTEXT)
        self.key = spec_key(spec)  # which vocabulary produced a list of ids (module docstring)
        self.bos_id: int | None = None
        self.add_bos = False  # whether an encoded prompt starts with bos_id (GPT-2 BPE: never)
        self.stop_ids = frozenset({self.eot_id} - {None})  # ids that end a reply
        self.special_tokens = dict(encoding._special_tokens)

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def gpt2(cls) -> "Tokenizer":
        return cls(_gpt2_encoding(), {"type": "gpt2"})

    @classmethod
    def bpe(cls, spec: dict) -> "Tokenizer":
        """The byte-level BPE that a `{"type": "bpe", ...}` spec describes (see `bpe_spec`)."""
        try:
            ranks = {base64.b64decode(tok): rank for rank, tok in enumerate(spec["ranks"])}
            # tiktoken panics mid-encode on a byte with no token: a truncated list of ranks
            missing = [b for b in _UTF8_BYTES if bytes([b]) not in ranks]
            if missing:
                raise ValueError(f"{len(missing)} bytes have no token, e.g. {missing[0]:#04x}; truncated?")
            special = {str(k): int(v) for k, v in spec.get("special_tokens", {}).items()}
            encoding = tiktoken.Encoding(
                name=spec.get("name", "custom-bpe"),
                pat_str=spec.get("pat_str", GPT2_PATTERN),
                mergeable_ranks=ranks,
                special_tokens=special,
            )
        except (KeyError, ValueError, TypeError, AttributeError, OverflowError) as e:
            raise TokenizerError(f"bad BPE tokenizer spec ({e})") from e
        return cls(encoding, spec)

    @staticmethod
    def bpe_spec(ranks: list[bytes], special_tokens: dict[str, int], pat_str: str = GPT2_PATTERN, name: str = "bpe") -> dict:
        """The spec of a byte-level BPE given its token bytes in rank order."""
        return {
            "type": "bpe",
            "name": name,
            "pat_str": pat_str,
            "ranks": [base64.b64encode(t).decode("ascii") for t in ranks],
            "special_tokens": special_tokens,
        }

    # -- use -----------------------------------------------------------------------------------

    @property
    def n_vocab(self) -> int:
        """Ids 0..n_vocab-1 are real tokens; a model's embedding may have more rows (padding)."""
        return self.encoding.n_vocab

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def encode_marked(self, text: str, plain=()) -> list[int]:
        """Template text: the same as `encode` (our own templates have no special markers)."""
        return self.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode(ids, errors="replace")

    def decode_bytes(self, ids: list[int]) -> bytes:
        return self.encoding.decode_bytes(ids)

    def token_bytes(self, token_id: int) -> bytes:
        return self.encoding.decode_single_token_bytes(token_id)

    def token_text(self, token_id: int) -> str:
        """A token shown on its own (for the inspector); partial UTF-8 shows as escapes."""
        return shown_bytes(self.token_bytes(token_id))


def spec_key(spec: dict) -> str:
    """A short content hash of a tokenizer spec: equal for specs that tokenize alike."""
    if spec.get("type") == "gpt2":  # the shipped files are pinned by their hashes
        content = {"type": "gpt2", "files": [GPT2_VOCAB_BPE_SHA256, GPT2_ENCODER_JSON_SHA256]}
    else:  # the name is a label; everything else decides the ids
        content = {k: v for k, v in spec.items() if k != "name"}
        content.setdefault("pat_str", GPT2_PATTERN)
    blob = json.dumps(content, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def _gpt2_encoding() -> tiktoken.Encoding:
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    try:
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(_BPE_DIR / "vocab.bpe"),
            encoder_json_file=str(_BPE_DIR / "encoder.json"),
            vocab_bpe_hash=GPT2_VOCAB_BPE_SHA256,
            encoder_json_hash=GPT2_ENCODER_JSON_SHA256,
        )
    except (OSError, ValueError) as e:
        raise TokenizerError(f"the GPT-2 BPE files shipped in {_BPE_DIR} are missing or damaged ({e})") from e
    return tiktoken.Encoding(
        name="gpt2",
        explicit_n_vocab=50257,
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: 50256},
    )


def shown_bytes(raw: bytes) -> str:
    """Token bytes as text for display: UTF-8 where they decode, else ASCII with \\xNN escapes
    (a token can hold part of a character)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "".join(chr(b) if b < 0x80 else f"\\x{b:02x}" for b in raw)
