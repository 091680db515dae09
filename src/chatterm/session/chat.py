"""ChatSession: what every front end drives.

It ties a conversation, the live sampling settings and a backend together and offers the chat
actions (send, regenerate, undo, edit, clear, system prompt), each as one call. Replies are
generators of engine events, meant to be consumed in a worker thread; nothing here knows about
Textual or terminals. After every reply the conversation is autosaved, if a store is given; a
save that fails (disk full, read-only folder, no permission) is reported through `warn` (a
callable taking one line, which front ends show) and never raised: the conversation stays in
memory and the next save tries again.

Backends only stream events; the session appends the assistant turn from their `Finished`
record (`add_reply`), so every backend, local or remote, gets the same bookkeeping.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Iterator

from ..engine.events import Event, Finished
from ..engine.settings import SamplingSettings
from .backend import ChatBackend
from .conversation import Conversation, Turn
from .persistence import ConversationStore

MAX_MESSAGE_CHARS = 200_000  # a 100 KB paste is fine; megabytes are almost surely a mistake


class ChatSession:
    def __init__(
        self,
        backend: ChatBackend | None = None,
        settings: SamplingSettings | None = None,
        conversation: Conversation | None = None,
        store: ConversationStore | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.backend = backend
        self.settings = settings or SamplingSettings()
        self.conversation = conversation or Conversation()
        self.store = store
        self.warn = warn or logging.getLogger("chatterm").warning  # see the module doc
        self.cancel = threading.Event()
        self._save_failure = ""  # the last autosave failure; "" while saving works

    # -- replies (run these in a worker thread) ------------------------------------------------

    def send(self, text: str, *, inspect: int = 0) -> Iterator[Event]:
        """Add a user message and stream the reply."""
        text = clean_message(text)
        self.conversation.add("user", text)
        self.save()
        return self._reply(inspect)

    def regenerate(self, *, inspect: int = 0) -> Iterator[Event]:
        """Replace the last reply with a new one."""
        if not self.conversation.turns:
            raise ValueError("nothing to regenerate yet")
        self.conversation.pop_reply()
        return self._reply(inspect)

    def _reply(self, inspect: int) -> Iterator[Event]:
        if self.backend is None:
            raise ValueError("no model is loaded yet")
        self.cancel.clear()
        conversation = self.conversation  # the reply belongs here even if /clear runs meanwhile
        try:
            for event in self.backend.reply(conversation, self.settings, cancel=self.cancel, inspect=inspect):
                if isinstance(event, Finished):  # before it is passed on: consumers see the turn
                    add_reply(conversation, event)
                    conversation.model = self.backend.info.name
                yield event
        finally:
            self.save()

    def stop(self) -> None:
        """Ask the reply in flight to stop; it ends within one decode step."""
        self.cancel.set()

    # -- editing -------------------------------------------------------------------------------

    def undo(self) -> bool:
        """Remove the last exchange (user message and reply). False when there is none."""
        removed = self.conversation.pop_exchange()
        self.save()
        return bool(removed)

    def edit_last(self) -> str:
        """Remove the last exchange and return the user's message, to edit and send again."""
        removed = self.conversation.pop_exchange()
        self.save()
        return removed[0].text if removed else ""

    def clear(self) -> None:
        """Start a new conversation (the old one stays saved), keeping the system prompt."""
        self.conversation = Conversation(system=self.conversation.system)

    def set_system(self, text: str) -> None:
        self.conversation.system = text.strip()
        self.save()

    def load_conversation(self, conversation: Conversation) -> None:
        self.conversation = conversation
        if self.store is not None:
            try:  # another chatterm may have it open: then this one continues in a copy
                notice = self.store.claim(conversation)
            except OSError as e:
                notice = f"cannot lock the conversation for autosave ({e.strerror or e})"
            if notice:
                self.warn(notice)

    def context_tokens(self) -> int:
        if self.backend is None:
            return 0
        return self.backend.context_tokens(self.conversation, self.settings)

    def save(self) -> None:
        """Autosave; a failure is a warning (once per kind of failure), never an exception."""
        if self.store is None or not self.conversation.turns:
            return
        try:
            notice = self.store.claim(self.conversation)
            path = self.store.save(self.conversation)
        except OSError as e:
            where = e.filename or self.store.folder
            failure = (f"autosave failed: {where}: {e.strerror or e}; the conversation is kept in memory "
                       "and saving is retried after every message")
            if failure != self._save_failure:
                self.warn(failure)
            self._save_failure = failure
            return
        if notice:
            self.warn(notice)
        if self._save_failure:
            self._save_failure = ""
            self.warn(f"autosave works again: saved to {path}")


def add_reply(conversation: Conversation, done: Finished) -> Turn:
    """Append the assistant turn a stream ended with: its text, whether it was cut short and why,
    and, when the backend keeps token ids, the ids it occupies in the context."""
    stopped = done.stop_reason in ("cancelled", "error")
    note = {"cancelled": "stopped", "length": "cut at max_new_tokens"}.get(done.stop_reason, "")
    if done.error:
        note = f"error: {done.error}"
    turn = conversation.add("assistant", done.text.strip(), stopped=stopped, note=note)
    if done.context_ids:
        turn.ids, turn.ids_key = list(done.context_ids), done.ids_key
    return turn


def clean_message(text: str) -> str:
    """Check and tidy a message before it joins the conversation (raises ValueError)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty message: type something first")
    if len(text) > MAX_MESSAGE_CHARS:
        raise ValueError(f"message too long ({len(text):,} characters; the limit is {MAX_MESSAGE_CHARS:,})")
    # Control characters other than newline and tab mean nothing to a model and can confuse
    # terminals when echoed back; drop them.
    text = "".join(ch for ch in text if ch in "\n\t" or ch >= " " and ch != "\x7f")
    text = text.replace("\r\n", "\n").strip()
    if not text:  # it held nothing but control characters
        raise ValueError("empty message: only control characters; type something first")
    return text
