"""A message sent while the model loads or a reply streams: kept, shown as queued, sent later.

Nothing typed is thrown away. Enter while the app cannot send yet puts the message in the queue:
it shows at the end of the chat, dimmed and titled "You · queued", and goes out by itself when
the model is ready or the reply ends. A second message typed meanwhile joins the queued one (one
turn, as when Claude Code or ChatGPT take text typed during a reply). Esc takes the queued text
back into the message box, unsent, to edit or to drop (while a reply streams, Esc also stops
it): the same as Claude Code does with queued messages on interrupt.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ..session.sanitize import printable
from .chat_view import ChatView

QUEUED_TITLE = "You · queued (Esc takes it back)"


class QueuedMessage(Static):
    def __init__(self, text: str) -> None:
        super().__init__(Text(printable(text)), classes="message user queued")
        self.border_title = QUEUED_TITLE

    def show(self, text: str) -> None:
        self.update(Text(printable(text)))


class SendQueue:
    def __init__(self, chat: ChatView) -> None:
        self.chat = chat
        self.text = ""
        self._widget: QueuedMessage | None = None

    @property
    def pending(self) -> bool:
        return bool(self.text)

    def add(self, text: str) -> None:
        self.text = f"{self.text}\n\n{text}" if self.text else text
        self.reshow()
        self.chat.follow()

    def reshow(self) -> None:
        """Show the queued message at the end of the chat (again, after the chat was redrawn)."""
        if not self.text:
            return
        if self._widget is not None and self._widget.parent is self.chat:
            self._widget.show(self.text)
            return
        self._widget = QueuedMessage(self.text)
        self.chat.mount(self._widget)

    def take(self) -> str:
        """The queued text ("" if none); the queue is empty afterwards."""
        text, self.text = self.text, ""
        if self._widget is not None:
            self._widget.remove()
            self._widget = None
        return text
