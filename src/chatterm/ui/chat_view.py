"""The chat pane: one widget per message; replies stream into a Markdown widget.

A streaming reply is appended through Textual's `MarkdownStream` (which coalesces fragments
when rendering falls behind), never re-rendered whole per token. The view is anchored to the
bottom, so it follows the newest text until the user scrolls up, and again once they scroll back
down. Model text is made inert before it reaches any widget: escape sequences and controls are
removed, Markdown is the only markup interpreted (Rich/Textual markup in it is shown as typed),
and links in it are not opened.
"""

from __future__ import annotations

from rich.text import Text
from textual.containers import VerticalScroll
from textual.content import Content
from textual.widgets import Markdown, Static

from ..session.conversation import Conversation, Turn
from ..session.sanitize import printable


class UserMessage(Static):
    def __init__(self, text: str) -> None:
        super().__init__(Text(printable(text)), classes="message user")  # Text: no markup parsing
        self.border_title = "You"


class Note(Static):
    """A one-line remark from the app (errors, confirmations, help)."""

    def __init__(self, text: str, kind: str = "info") -> None:
        super().__init__(Text(printable(text)), classes=f"note {kind}")


class AssistantMessage(Markdown):
    def __init__(self, text: str = "", note: str = "") -> None:
        super().__init__(printable(text), classes="message assistant", open_links=False)
        self.border_title = "Assistant"
        self._stream = None
        self.text = printable(text)
        if note:
            self.set_note(note)

    def set_note(self, note: str) -> None:
        self.border_subtitle = Content(printable(note))  # Content: an error's "[Errno 2]" stays text
        self.set_class(bool(note), "-noted")

    async def append_text(self, fragment: str) -> None:
        fragment = printable(fragment)
        if not fragment:
            return
        if self._stream is None:
            self._stream = Markdown.get_stream(self)
        self.text += fragment
        await self._stream.write(fragment)

    async def finish(self, final_text: str, note: str = "") -> None:
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        final_text = printable(final_text)
        if final_text.strip() != self.text.strip():
            self.text = final_text
            await self.update(final_text)
        if not final_text.strip():
            await self.update("*(no reply)*")
        self.set_note(note)


class ChatView(VerticalScroll):
    """The scrolling list of messages."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.can_focus = False

    def on_mount(self) -> None:
        self.anchor()  # stay at the bottom as text arrives, until the user scrolls up

    async def add(self, widget) -> None:
        await self.mount(widget)

    def follow(self) -> None:
        """Jump to the newest text and stick to it again (after the user sends a message)."""
        self.scroll_end(animate=False)

    def show_conversation(self, conversation: Conversation) -> None:
        """Redraw every message. Not awaited: Textual applies the removal and the mounts in order."""
        self.remove_children()
        if conversation.system:
            self.mount(Note(f"System: {conversation.system}", "system"))
        widgets = [self._widget_for(turn) for turn in conversation.turns]
        if widgets:
            self.mount_all(widgets)
        self.follow()

    @staticmethod
    def _widget_for(turn: Turn):
        if turn.role == "user":
            return UserMessage(turn.text)
        return AssistantMessage(turn.text, turn.note)

    def last_assistant(self) -> AssistantMessage | None:
        found = self.query(AssistantMessage)
        return found.last() if found else None
