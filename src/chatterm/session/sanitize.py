"""Text from strangers (a model, a file, a server) made safe to show and to keep.

A model (or a checkpoint made to misbehave) can emit terminal escape sequences that move the
cursor, retitle the window, rewrite the clipboard (OSC 52) or hide text. We drop every escape
sequence and every control character except newline and tab, before display (`printable`).

JSON can spell a lone UTF-16 surrogate (`"\\ud800"`): Python decodes it into a str that cannot be
encoded as UTF-8, so printing it or saving the conversation holding it fails much later, far
from the file or server that sent it. `decode_json` is the one way chatterm decodes JSON it did
not write, and replaces such surrogates with U+FFFD at the door.
"""

from __future__ import annotations

import json
import re

# CSI (ESC [ ... final), OSC (ESC ] ... BEL or ST), other two-byte escapes, and C1 controls.
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"  # DCS, SOS, PM, APC
    r"|\x1b[@-Z\\-_]?"  # other ESC sequences, and a lone ESC
    r"|\x9b[0-?]*[ -/]*[@-~]"  # 8-bit CSI
)
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` without escape sequences or control characters (newline and tab kept)."""
    return _CONTROLS.sub("", _ESCAPES.sub("", text))


def osc52(text: str) -> str:
    """The escape sequence that asks the terminal to put `text` on the clipboard (OSC 52; it
    works over SSH). The text travels base64-encoded, so nothing in it is interpreted."""
    import base64

    return "\x1b]52;c;" + base64.b64encode(text.encode("utf-8")).decode("ascii") + "\x07"


def decode_json(text: str | bytes):
    """`json.loads(text)` with every lone surrogate in its strings (keys too) replaced by U+FFFD.

    Raises what json.loads raises (ValueError, RecursionError for absurd nesting)."""
    return _valid_unicode(json.loads(text))


def _valid_unicode(value):
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:  # a lone surrogate (a pair was already joined by json)
            return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list):
        return [_valid_unicode(v) for v in value]
    if isinstance(value, dict):
        return {_valid_unicode(k): _valid_unicode(v) for k, v in value.items()}
    return value
