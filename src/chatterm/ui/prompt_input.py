"""The message input: multi-line, Enter sends, history on Up/Down.

Enter sends. A newline is Ctrl+J, Alt+Enter or Shift+Enter (many terminals cannot send
Shift+Enter, so the other two are the dependable ones; terminal_keys.py makes the ESC CR that
terminals send for Alt+Enter arrive as alt+enter). Up on the first line and Down on the last
line walk through earlier inputs, like a shell (with a `history`, kept across launches). PageUp/PageDown (also with Shift) and
Ctrl+Home/Ctrl+End scroll the chat, not the box: the message box keeps the focus, as in most chat
apps (a message rarely needs paging; Home/End still move within the line).
"""

from __future__ import annotations

from dataclasses import dataclass

from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.widgets import TextArea

from ..session.user.input_history import InputHistory


class PromptInput(TextArea):
    BINDINGS = [
        Binding("ctrl+j,alt+enter,shift+enter", "newline", "Newline", show=False, id="newline"),
        # These replace TextArea's own page keys (a subclass's binding wins).
        Binding("pageup,shift+pageup", "app.scroll_chat('page_up')", "Scroll up", show=False),
        Binding("pagedown,shift+pagedown", "app.scroll_chat('page_down')", "Scroll down", show=False),
        Binding("ctrl+home", "app.scroll_chat('home')", "Chat top", show=False),
        Binding("ctrl+end", "app.scroll_chat('end')", "Chat end", show=False),
    ]
    HANDLED_KEYS = ("enter", "up", "down", "tab", "shift+tab")  # taken in _on_key or by focus moves (keys.py)

    @dataclass
    class Submitted(Message):
        input: "PromptInput"
        text: str

    def __init__(self, history: InputHistory | None = None, **kwargs) -> None:
        super().__init__(soft_wrap=True, show_line_numbers=False, tab_behavior="focus", **kwargs)
        self.input_history = history  # kept across launches (session/user/input_history.py); None: this run only
        self.sent: list[str] = history.load() if history else []
        self._history_pos: int | None = None  # index into history while browsing
        self._draft = ""

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            self.submit()
            return
        if event.key == "up" and self.cursor_location[0] == 0 and self.sent:
            event.stop()
            event.prevent_default()
            self._browse(-1)
            return
        if event.key == "down" and self.cursor_location[0] == self.document.line_count - 1 and self._history_pos is not None:
            event.stop()
            event.prevent_default()
            self._browse(+1)
            return
        await super()._on_key(event)

    def action_newline(self) -> None:
        self.insert("\n")

    def submit(self) -> None:
        text = self.text
        if not text.strip():
            return
        if not self.sent or self.sent[-1] != text:
            self.sent.append(text)
            if self.input_history:
                self.input_history.add(text)
        self._history_pos = None
        self.clear()
        self.post_message(self.Submitted(self, text))

    def _browse(self, direction: int) -> None:
        if self._history_pos is None:
            self._draft = self.text
            pos = len(self.sent)
        else:
            pos = self._history_pos
        pos += direction
        if pos < 0:
            pos = 0
        if pos >= len(self.sent):
            self._history_pos = None
            self.load_text(self._draft)
        else:
            self._history_pos = pos
            self.load_text(self.sent[pos])
        self.move_cursor(self.document.end)
