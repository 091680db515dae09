"""Model output is untrusted text: make it inert before any terminal sees it.

A model (or a checkpoint made to misbehave) can emit terminal escape sequences that move the
cursor, retitle the window, rewrite the clipboard (OSC 52) or hide text. We drop every escape
sequence and every control character except newline and tab, before display.
"""

from __future__ import annotations

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
