"""How much chatterm takes from a server, at most, and the readers that hold to it.

A server is a stranger: it can send an endless body, an endless line, a small gzip body that
inflates to gigabytes, more tokens than asked for, or one byte a second forever. Each of those
is cut here, at a named cap, with a one-line `BodyRefused`, before it can fill memory:

- `read_capped` reads a whole body (a JSON document, an error) up to a number of bytes.
- `iter_sse_data` yields the `data` of each server-sent event, with a cap on a line and an event.
- Both read the raw bytes and inflate gzip/deflate themselves, a bounded piece at a time
  (httpx would inflate each network read whole: 64 KB of gzip can be 64 MB), so a cap counts the
  bytes after inflating and memory stays near the cap.
- `reply_deadline_s` and the token caps bound a reply in time and length; reply.py
  enforces them, since only it sees the tokens and can stop waiting at any moment.
"""

from __future__ import annotations

import re
import zlib
from typing import Iterator

import httpx

# A model list, /props or a whole non-streamed reply: llama.cpp's /props (with a long chat
# template) is about 20 KB and a model list of hundreds of models under 1 MB; 8 MB leaves room
# for a non-streamed reply of a long context and is still nothing for memory.
MAX_JSON_BYTES = 8 * 1024 * 1024
# An error body is shown as one line of at most 240 characters; 64 KB is far more than any
# server's error document (FastAPI's validation errors included) and keeps a bad one cheap.
MAX_ERROR_BODY_BYTES = 64 * 1024
# One SSE line, and one event's data: a chunk holds a token or a few, with top-20 logprobs about
# 4 KB; 1 MB is 250 times that, and bounds what a line with no end can take.
MAX_SSE_EVENT_BYTES = 1024 * 1024
# Inflated bytes handed on at a time: the most a compressed body can take beyond its cap.
INFLATE_PIECE_BYTES = 64 * 1024
# A reply may take the silence a read allows (prefill, a model loading) plus this per token
# asked for: a CPU server with a model too big for it makes about a token a second; at half
# that speed it is still working, slower than that it is a server that drips.
SECONDS_PER_TOKEN = 2.0
# No tokenizer has a token longer than this (GPT-4's longest are runs of spaces): a reply with
# more characters than max_tokens times this is a server that ignored max_tokens.
MAX_CHARS_PER_TOKEN = 128

ACCEPT_ENCODING = "gzip, deflate"  # what we ask for: the encodings `_Inflater` can bound


class BodyRefused(ValueError):
    """A body chatterm will not read on: past its cap, corrupt, or in an encoding it did not ask
    for (one line, naming the cap)."""


def reply_deadline_s(read_timeout: float, max_tokens: int) -> float:
    """The longest one streamed reply of `max_tokens` may take, from request to end."""
    return read_timeout + max_tokens * SECONDS_PER_TOKEN


def _size_text(n: int) -> str:
    return f"{n // (1024 * 1024)} MB" if n >= 1024 * 1024 else f"{n // 1024} KB"


class _Inflater:
    """Undoes one Content-Encoding, handing on at most INFLATE_PIECE_BYTES at a time."""

    def __init__(self, encoding: str) -> None:
        encoding = encoding.strip().lower()
        self._raw_deflate_next = False  # "deflate" is meant to be zlib-wrapped; some servers send it bare
        if encoding in ("", "identity"):
            self._z = None
        elif encoding in ("gzip", "x-gzip"):
            self._z = zlib.decompressobj(zlib.MAX_WBITS | 16)
        elif encoding == "deflate":
            self._z = zlib.decompressobj(zlib.MAX_WBITS | 32)  # a zlib or gzip header
            self._raw_deflate_next = True
        else:  # we asked for ACCEPT_ENCODING only; anything else is unreadable by design
            raise BodyRefused(f"the server answered in an encoding chatterm did not ask for ({encoding[:40]})")

    def pieces(self, data: bytes) -> Iterator[bytes]:
        if self._z is None:
            yield data
            return
        while not self._z.eof:
            try:
                piece = self._z.decompress(data, INFLATE_PIECE_BYTES)
            except zlib.error:
                if not self._raw_deflate_next:
                    raise BodyRefused("the server's compressed body is corrupt") from None
                self._z, self._raw_deflate_next = zlib.decompressobj(-zlib.MAX_WBITS), False
                continue
            self._raw_deflate_next = False
            if piece:
                yield piece
            data = self._z.unconsumed_tail
            if not data and len(piece) < INFLATE_PIECE_BYTES:
                return  # a full piece may leave output inside zlib: only a short one says it is all out


def iter_body(response: httpx.Response) -> Iterator[bytes]:
    """The body's bytes, inflated in bounded pieces (the response must be streamed)."""
    inflater = _Inflater(response.headers.get("content-encoding", ""))
    for raw in response.iter_raw():
        yield from inflater.pieces(raw)


def read_capped(response: httpx.Response, limit: int, *, what: str, cut: bool = False) -> bytes:
    """The whole body, at most `limit` bytes: past it, BodyRefused, or with `cut` the first
    `limit` bytes (an error body, shown cut anyway)."""
    body = bytearray()
    for piece in iter_body(response):
        body += piece
        if len(body) > limit:
            if cut:
                return bytes(body[:limit])
            raise BodyRefused(f"the server's {what} is larger than {_size_text(limit)}; chatterm stopped reading it")
    return bytes(body)


_LINE_END = re.compile(rb"\r\n|\r|\n")


def iter_sse_data(response: httpx.Response, limit: int = MAX_SSE_EVENT_BYTES) -> Iterator[str]:
    """The data of each complete server-sent event (its `data:` lines joined by newlines), as
    text; fields other than `data` are ignored. A line or an event longer than `limit` bytes
    raises BodyRefused. An event cut off by the end of the body is not yielded."""
    pending = bytearray()  # bytes of a line not yet ended
    data: list[bytes] = []  # the data lines of the event being read
    size = 0
    for piece in iter_body(response):
        pending += piece
        start = 0
        for end in _LINE_END.finditer(pending):
            if end.group() == b"\r" and end.end() == len(pending):
                break  # a CR at the end of a piece: the LF of a CRLF may follow
            line = bytes(pending[start:end.start()])
            start = end.end()
            if not line:  # a blank line ends the event
                if data:
                    yield b"\n".join(data).decode("utf-8", "replace")
                data, size = [], 0
                continue
            field, _, value = line.partition(b":")
            if field == b"data":
                value = value[1:] if value.startswith(b" ") else value
                size += len(value) + 1
                if size > limit:
                    raise BodyRefused(f"an event from the server is larger than {_size_text(limit)}; "
                                       "chatterm stopped reading")
                data.append(value)
        del pending[:start]
        if len(pending) > limit:
            raise BodyRefused(f"a line from the server is longer than {_size_text(limit)}; chatterm stopped reading")
