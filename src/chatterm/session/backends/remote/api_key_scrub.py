"""The API key kept out of everything chatterm shows, logs or saves.

A server can echo the key back in an error, and chatterm's own messages can quote what a server
sent: the key then arrives as typed, escaped (repr, JSON, HTML), URL-encoded, or with its runs of
spaces folded onto one line. `KeyScrubber` knows every one of those forms and replaces each with
`***`: `text()` for a message, `stream()` for a reply that arrives in pieces, where a key split
over two pieces is caught too (its possible start is held back, as a stop string's is:
engine/stop.py).
"""

from __future__ import annotations

import html
import json
import re
from urllib.parse import quote, quote_plus

from ....engine.stop import StopStringMatcher

SHOWN_INSTEAD = "***"


def key_forms(key: str) -> list[str]:
    """Every spelling of `key` that can reach a message, longest first (so a longer form is never
    left with a tail by a shorter one)."""
    backslashed = key.replace("\\", "\\\\")
    forms = {key, repr(key)[1:-1], repr(key.encode("utf-8", "replace"))[2:-1], json.dumps(key)[1:-1],
             json.dumps(key, ensure_ascii=False)[1:-1], backslashed.replace("'", "\\'"),
             backslashed.replace('"', '\\"'), backslashed.replace("'", "\\'").replace('"', '\\"'),
             html.escape(key), html.escape(key, quote=False), quote(key, safe=""), quote_plus(key)}
    forms |= {" ".join(form.split()) for form in forms}  # as in a message folded onto one line
    return sorted((form for form in forms if form.strip()), key=len, reverse=True)


class KeyScrubber:
    def __init__(self, key: str | None) -> None:
        self.forms = key_forms(key) if key else []
        self._pattern = re.compile("|".join(map(re.escape, self.forms))) if self.forms else None

    def text(self, text: str) -> str:
        """`text` with every form of the key replaced."""
        return self._pattern.sub(SHOWN_INSTEAD, text) if self._pattern is not None else text

    def stream(self) -> "StreamScrubber":
        return StreamScrubber(self.forms)


class StreamScrubber:
    """Text in pieces, released without the key: `feed` returns what is safe to show now, `flush`
    the held-back rest once the text has ended."""

    def __init__(self, forms: list[str]) -> None:
        self.forms = forms
        self._matcher = StopStringMatcher(forms)

    def feed(self, text: str) -> str:
        out = []
        while True:
            seen = self._matcher.held + text
            safe, found = self._matcher.feed(text)
            out.append(safe)
            if not found:
                return "".join(out)
            out.append(SHOWN_INSTEAD)  # a form of the key ends the matcher's stream: go on after it
            text = seen[len(safe) + len(self._matcher.stopped_at):]
            self._matcher = StopStringMatcher(self.forms)

    def flush(self) -> str:
        return self._matcher.flush()
