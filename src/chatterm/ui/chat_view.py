"""The chat pane: one widget per message; replies stream into a Markdown widget.

A streaming reply is appended through Textual's `MarkdownStream` (which coalesces fragments
when rendering falls behind), never re-rendered whole per token. The view is anchored to the
bottom, so it follows the newest text until the user scrolls up, and again once they scroll back
down. Model text is made inert before it reaches any widget: escape sequences and controls are
removed, Markdown is the only markup interpreted (Rich/Textual markup in it is shown as typed),
and links in it are not opened. Messages of turns the model no longer sees (dropped to fit its
window) are dimmed and titled "out of context".
"""

from __future__ import annotations

from rich.text import Text
from textual.containers import VerticalScroll
from textual.content import Content
from textual.widgets import Markdown, Static

from ..session.chats.conversation import Conversation, Turn
from ..session.sanitize import printable
from .thinking_block import ThinkingBlock


OUT_OF_CONTEXT = "out of context"


class TurnMessage:
    """A message that shows one turn of the conversation. Its title is who speaks, which version
    is shown ("2/3", set by message_actions.py) and, once the turn is older than the model's
    context (`Conversation.context_start`), "out of context" (the message is dimmed too)."""

    TITLE = ""
    _version = ""  # " · 2/3" when the turn has sibling versions
    _in_context = True

    def set_in_context(self, in_context: bool) -> None:
        self._in_context = in_context
        self.set_class(not in_context, "-out-of-context")
        self._retitle()

    def set_version(self, version: str) -> None:
        """"2/3", or "" for a turn without alternatives."""
        self._version = f" · {version}" if version else ""
        self._retitle()

    def _retitle(self) -> None:
        context = "" if self._in_context else f" · {OUT_OF_CONTEXT}"
        self.border_title = f"{self.TITLE}{self._version}{context}"


class UserMessage(TurnMessage, Static):
    TITLE = "You"

    def __init__(self, text: str) -> None:
        super().__init__(Text(printable(text)), classes="message user")  # Text: no markup parsing
        self.border_title = self.TITLE


class Note(Static):
    """A one-line remark from the app (errors, confirmations, help)."""

    def __init__(self, text: str, kind: str = "info") -> None:
        super().__init__(Text(printable(text)), classes=f"note {kind}")


class AssistantMessage(TurnMessage, Markdown):
    TITLE = "Assistant"

    def __init__(self, text: str = "", note: str = "", *, waiting: bool = False) -> None:
        """`waiting`: a reply about to stream shows one dim "…" line until its first text."""
        super().__init__("…" if waiting else printable(text), classes="message assistant", open_links=False)
        self.set_class(waiting, "-waiting")
        self.border_title = self.TITLE
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
        if self.has_class("-waiting"):
            self.remove_class("-waiting")
            await self.update("")
        if self._stream is None:
            self._stream = Markdown.get_stream(self)
        self.text += fragment
        await self._stream.write(fragment)

    async def finish(self, final_text: str, note: str = "") -> None:
        self.remove_class("-waiting")
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        final_text = printable(final_text)
        if final_text.strip() != self.text.strip() or not self.text.strip():
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

    def scroll_by_key(self, where: str) -> None:
        """PageUp/PageDown/Ctrl+Home/Ctrl+End from the message box: "page_up", "page_down",
        "home" or "end". Scrolling back to the end sticks to the newest text again."""
        if where == "end":
            self.follow()
            return
        {"page_up": self.scroll_page_up, "page_down": self.scroll_page_down, "home": self.scroll_home}[where](
            animate=False)

    def follow(self) -> None:
        """Jump to the newest text and stick to it again (after the user sends a message)."""
        self.scroll_end(animate=False)

    def show_conversation(self, conversation: Conversation) -> None:
        """Redraw every message. Not awaited: Textual applies the removal and the mounts in order."""
        self.remove_children()
        if conversation.system:
            self.mount(Note(f"System: {conversation.system}", "system"))
        widgets = []
        for index, turn in enumerate(conversation.turns):
            widget = self._widget_for(turn)
            widget.set_in_context(index >= conversation.context_start)
            if turn.thinking:
                widgets.append(ThinkingBlock(turn.thinking, turn.thinking_tokens))
            widgets.append(widget)
        if widgets:
            self.mount_all(widgets)
        self.follow()

    def mark_context(self, context_start: int) -> None:
        """Mark the messages of turns before `context_start` as out of the model's context. The
        turn messages on screen are the conversation's turns in order (plus, while a reply
        streams, the reply being written)."""
        turn_messages = [w for w in self.children if isinstance(w, TurnMessage)]
        for index, widget in enumerate(turn_messages):
            widget.set_in_context(index >= context_start)

    @staticmethod
    def _widget_for(turn: Turn):
        if turn.role == "user":
            return UserMessage(turn.text)
        return AssistantMessage(turn.text, turn.note)

    def thinking_of(self, message: AssistantMessage) -> ThinkingBlock | None:
        """The reasoning block shown above a reply, if it has one."""
        children = list(self.children)
        at = children.index(message) if message in children else 0
        return children[at - 1] if at and isinstance(children[at - 1], ThinkingBlock) else None

    def last_assistant(self) -> AssistantMessage | None:
        found = self.query(AssistantMessage)
        return found.last() if found else None
