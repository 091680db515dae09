"""Streamed text shown trimmed, as the finished turn is saved (`add_reply` strips it).

`TrimmedStream.feed(piece)` returns what can be shown now: trailing whitespace is held back until
more text follows (and dropped if none does), and with `strip_leading` the whitespace before the
first visible character is dropped. `chatterm generate` and the plain REPL print a reply through
it, then exactly one newline, so no reply starts with a space or ends with a blank line.
"""

from __future__ import annotations


class TrimmedStream:
    """Streamed text without trailing whitespace (held back until more text follows, dropped at
    the end) and, for a chat reply, without leading whitespace: `generate` prints the text and
    then exactly one newline. A completion keeps its leading space: prompt + output is the text."""

    def __init__(self, strip_leading: bool) -> None:
        self.started = not strip_leading
        self.held = ""

    def feed(self, piece: str) -> str:
        if not self.started:
            piece = piece.lstrip()
            self.started = bool(piece)
        text = self.held + piece
        body = text.rstrip()
        self.held = text[len(body):]
        return body
