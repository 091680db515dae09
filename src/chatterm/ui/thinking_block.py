"""A thinking model's reasoning, shown above its reply: dimmed, and folded once the answer starts.

While the reasoning streams the block is open, titled "thinking…"; when the answer begins it
folds to its title line, "thought for 212 tokens". F4 or `/think` opens and folds it again (the
selected reply's, else the last one's). The text is made inert (`printable`) and shown as plain
text: no markup of the model's reaches the terminal.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ..session.sanitize import printable


class ThinkingBlock(Static):
    def __init__(self, text: str = "", tokens: int = 0, *, streaming: bool = False) -> None:
        super().__init__("", classes="thinking")
        self.text = printable(text)
        self.tokens = tokens
        self.streaming = streaming
        self.open = streaming  # a finished block starts folded
        self._show()

    def append(self, fragment: str) -> None:
        self.text += printable(fragment)
        self._show()

    def answer_started(self) -> None:
        """The reply's answer began: fold the reasoning away (F4 opens it again)."""
        if self.streaming and self.open:
            self.open = False
            self._show()

    def finish(self, tokens: int) -> None:
        self.streaming = False
        self.tokens = tokens
        self._show()

    def toggle(self) -> None:
        self.open = not self.open
        self._show()

    def _show(self) -> None:
        if self.streaming:
            title = "thinking…"
        else:
            title = f"thought for {self.tokens} tokens" if self.tokens else "thought"
        self.set_class(not self.open, "-folded")
        if self.open:  # the reasoning in a frame titled with its length
            self.border_title, self.border_subtitle = f"▾ {title}", "F4 folds"
            self.update(Text(self.text.strip()))
        else:  # one dim line
            self.border_title = self.border_subtitle = ""
            self.update(Text(f"▸ {title} · F4 shows it"))
