"""Hugging Face `tokenizers` behind the engine's tokenizer interface.

Two specs build one: `{"type": "huggingface", "path": ".../tokenizer.json", ...}` from a model
folder, and `{"type": "gguf", "model": "gpt2"|"llama", "tokens": [...], ...}` from the tokenizer
embedded in a GGUF file (byte-level BPE as in GPT-2/SmolLM2/Qwen/Llama 3, or a SentencePiece-style
Llama vocabulary, turned into a BPE with byte fallback).

The interface is every tokenizer's (engine/tokenizer.py lists it); `stop_ids`
holds every id that ends a reply (EOS, end-of-turn). `open_tokenizer` (tokenizers.py) builds one.

`encode` never turns text into special tokens: a user typing `<|im_end|>` gets the characters.
`encode_marked(text, plain)` is for chat templates: special tokens in the template's own text are
parsed, the `plain` spans (message contents) are not.
"""

from __future__ import annotations

import hashlib
import re

from ..model.errors import first_line, is_foreign_panic
from ..regular_file import read_regular
from .tokenizer import TokenizerError, shown_bytes

MAX_TOKENIZER_BYTES = 512 * 1024 * 1024  # the biggest real tokenizer.json is tens of MB


def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE writes each byte as a printable character; this is the way back.
    Printable Latin-1 bytes stand for themselves, the other 68 for chr(256), chr(257), ..."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class HFTokenizer:
    def __init__(self, raw, spec: dict, *, bos: str | None = None, eos: str | None = None, content: bytes = b"") -> None:
        """`raw` is a `tokenizers.Tokenizer`; `bos`/`eos` the texts of those tokens, if any;
        `content` what defines the vocabulary (file bytes), for `key`."""
        self.spec = spec
        self._raw = raw
        # which vocabulary produced a list of ids (see tokenizer.py): the content, not the path
        self.key = hashlib.sha256(content or raw.to_str().encode("utf-8")).hexdigest()[:16]
        raw.encode_special_tokens = True  # markers in text are text; see encode_marked
        added = raw.get_added_tokens_decoder()  # id -> AddedToken
        self.special_tokens = {t.content: i for i, t in added.items() if t.special}
        markers = sorted(self.special_tokens, key=len, reverse=True)  # longest first
        self._marker = re.compile("|".join(map(re.escape, markers))) if markers else None
        self._bytes = self._token_bytes_table(added)
        self.bos_id = raw.token_to_id(bos) if bos else None
        self.eot_id = raw.token_to_id(eos) if eos else None  # the generator's end-of-text id
        stop = [self.eot_id, *(spec.get("stop_ids") or ())]
        self.stop_ids = frozenset(i for i in stop if isinstance(i, int) and 0 <= i < len(self._bytes))
        self.add_bos = bool(spec.get("add_bos_token"))

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_spec(cls, spec: dict) -> "HFTokenizer":
        from tokenizers import Tokenizer as RawTokenizer

        try:
            if spec.get("type") == "huggingface":
                content = read_regular(spec["path"], MAX_TOKENIZER_BYTES)  # never blocks on a FIFO
                raw = RawTokenizer.from_str(content.decode("utf-8"))
                return cls(raw, spec, bos=spec.get("bos_token"), eos=spec.get("eos_token"), content=content)
            if spec.get("type") == "gguf":
                from .gguf_tokenizer import tokenizer_from_gguf

                tokens = spec["tokens"]
                bos = tokens[spec["bos_id"]] if isinstance(spec.get("bos_id"), int) else None
                eos = tokens[spec["eos_id"]] if isinstance(spec.get("eos_id"), int) else None
                fields = (spec.get(k) or [] for k in ("tokens", "merges", "token_types"))
                content = "\0".join("\1".join(map(str, f)) for f in fields).encode("utf-8")
                return cls(tokenizer_from_gguf(spec), spec, bos=bos, eos=eos, content=b"gguf:" + content)
        except TokenizerError:
            raise
        except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exception for bad files
            raise TokenizerError(f"cannot build the tokenizer ({first_line(e)})") from e
        raise TokenizerError(f"unknown tokenizer type {spec.get('type')!r}")

    def _token_bytes_table(self, added: dict) -> list[bytes]:
        vocab = self._raw.get_vocab(with_added_tokens=True)
        table = [b""] * (max(vocab.values(), default=-1) + 1)
        byte_level = "ByteLevel" in f"{self._raw.decoder!r}{self._raw.pre_tokenizer!r}"
        alphabet = byte_level_alphabet()
        for token, i in vocab.items():
            if i in added:  # added tokens are stored as their text
                table[i] = added[i].content.encode("utf-8")
            elif byte_level:
                table[i] = bytes(alphabet[c] for c in token) if all(c in alphabet for c in token) else token.encode()
            else:  # SentencePiece: "▁" is a space, <0xNN> is one raw byte
                found = _BYTE_TOKEN.fullmatch(token)
                table[i] = bytes([int(found.group(1), 16)]) if found else token.replace("▁", " ").encode("utf-8")
        return table

    # -- use -----------------------------------------------------------------------------------

    @property
    def n_vocab(self) -> int:
        return len(self._bytes)

    def encode(self, text: str) -> list[int]:
        """Plain text: special-token markers in it stay text. TokenizerError (one line) when the
        tokenizer crashes on it: a `tokenizer.json`'s regex can make the Rust core panic on some
        input (Oniguruma's backtracking limit), and a panic is a `BaseException` that would
        otherwise get past every handler."""
        if not text:
            return []
        try:
            return self._raw.encode(text, add_special_tokens=False).ids
        except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exception
            raise TokenizerError(f"the tokenizer failed on this text ({first_line(e)})") from None
        except BaseException as e:
            if is_foreign_panic(e):
                raise TokenizerError(f"the tokenizer crashed on this text ({first_line(e)})") from None
            raise

    def encode_marked(self, text: str, plain: list[tuple[int, int]] = ()) -> list[int]:
        """Template text whose special-token markers become special tokens, except inside the
        `plain` (start, end) character spans (message contents), which are encoded as `encode`.
        Text between markers is encoded on its own, as `tokenizers` does around added tokens."""
        ids, pos = [], 0
        for a, b in [*sorted(plain), (len(text), len(text))]:
            ids += self._encode_template(text[pos:a])
            ids += self.encode(text[a:b])
            pos = b
        return ids

    def _encode_template(self, text: str) -> list[int]:
        if self._marker is None:
            return self.encode(text)
        ids, pos = [], 0
        for found in self._marker.finditer(text):
            ids += self.encode(text[pos : found.start()])
            ids.append(self.special_tokens[found.group()])
            pos = found.end()
        return ids + self.encode(text[pos:])

    def decode_bytes(self, ids: list[int]) -> bytes:
        return b"".join(self._bytes[i] for i in ids)

    def decode(self, ids: list[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        return self._bytes[token_id]

    def token_text(self, token_id: int) -> str:
        """A token shown on its own (for the inspector); partial UTF-8 shows as escapes."""
        return shown_bytes(self.token_bytes(token_id))
