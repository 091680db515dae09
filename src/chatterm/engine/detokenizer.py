"""Bytes of tokens in, text out, without ever splitting a character.

A byte-level BPE token can end in the middle of a multi-byte UTF-8 character (emoji, accented
letters, CJK). Decoding token by token would show U+FFFD for a moment; instead, the incomplete
tail is held back until the bytes that finish it arrive. Python's incremental UTF-8 decoder does
exactly this, and with errors="replace" its output joined over the stream equals a one-shot
decode of all the bytes, byte for byte.
"""

from __future__ import annotations

import codecs


class StreamingDetokenizer:
    def __init__(self, token_bytes) -> None:
        """`token_bytes(id) -> bytes` maps a token id to its bytes (Tokenizer.token_bytes)."""
        self._token_bytes = token_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token_id: int) -> str:
        """Text that is complete once this token is added (possibly empty)."""
        return self._decoder.decode(self._token_bytes(token_id))

    def flush(self) -> str:
        """Whatever is still held back, at the end of the stream (invalid bytes become U+FFFD)."""
        return self._decoder.decode(b"", final=True)
