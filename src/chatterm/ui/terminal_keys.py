"""Alt+Enter as terminals send it: ESC then CR.

Textual's input parser reads ESC followed by a character as that character with Alt, but only
for one-character key names: ESC CR comes out as plain "enter", so Alt+Enter would send the
message instead of adding a line. `recognise_alt_enter()` wraps the parser's key mapping (once,
for every driver, the browser's included) so that ESC CR and ESC LF arrive as "alt+enter". A lone
Esc is untouched (it still stops a reply), and so is a terminal that reports Alt+Enter itself
(the kitty keyboard protocol).
"""

from __future__ import annotations

from textual import events
from textual._xterm_parser import XTermParser  # no public hook for this; the wrap is checked by tests

_ENTER_CHARACTERS = ("\r", "\n")


def recognise_alt_enter() -> None:
    original = XTermParser._sequence_to_key_events
    if getattr(original, "_chatterm_alt_enter", False):
        return

    def sequence_to_key_events(self, sequence: str, alt: bool = False):
        if alt and sequence in _ENTER_CHARACTERS:
            yield events.Key("alt+enter", None)
            return
        yield from original(self, sequence, alt)

    sequence_to_key_events._chatterm_alt_enter = True
    XTermParser._sequence_to_key_events = sequence_to_key_events
