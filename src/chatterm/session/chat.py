"""ChatSession: what every front end drives.

It ties a conversation, the live sampling settings and a backend together and offers the chat
actions (send, regenerate, continue, undo, edit, alternatives, clear, system prompt), each as one
call. Files attached with `/read` (`attachments`) go into the next message sent; an undone
exchange can be put back (`redo`) until the next one. Regenerating and editing keep the earlier
version as an alternative (session/chats/conversation.py).
Editing is two steps, so that every front end can put the text in its own input first:
`start_edit(index)` returns the message's text, and the next `send` replaces that message. Replies are
generators of engine events, meant to be consumed in a worker thread; nothing here knows about
Textual or terminals. After every reply the conversation is autosaved, if a store is given; a
save that fails (disk full, read-only folder, no permission) is reported through `warn` (a
callable taking one line, which front ends show) and never raised: the conversation stays in
memory and the next save tries again.

Backends only stream events; the session appends the assistant turn from their `Finished`
record (`add_reply`), so every backend, local or remote, gets the same bookkeeping. The session
owns its backend: `use_backend` (a `/model` switch) and `close` (the front end is done) close the
one let go, once no reply streams from it any more.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Iterator

from ..engine.events import Event, Finished
from ..engine.settings import SamplingSettings
from .attachments import Attachment, with_attachments
from .backends.contract import ChatBackend
from .chats.conversation import MAX_MESSAGE_CHARS, Conversation, Turn
from .chats.persistence import ConversationStore
from .prompts.template_sandbox import TemplateError


class MessageNotSent(ValueError):
    """The prompt for a message could not be built, and the message was taken back out."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"{reason}; the message was not added to the chat")
        self.reason = reason  # the failure itself, for a front end with no chat to speak of


class ChatSession:
    def __init__(
        self,
        backend: ChatBackend | None = None,
        settings: SamplingSettings | None = None,
        conversation: Conversation | None = None,
        store: ConversationStore | None = None,
        warn: Callable[[str], None] | None = None,
        autosave: bool = True,
    ) -> None:
        self.backend = backend
        self.settings = settings or SamplingSettings()
        self.conversation = conversation or Conversation()
        self.store = store
        self.autosave = autosave  # False: saved chats are read (-c, /load) but only `/save` writes one
        self.warn = warn or logging.getLogger("chatterm").warning  # see the module doc
        self.cancel = threading.Event()
        self._save_failure = ""  # the last autosave failure; "" while saving works
        self.editing: int | None = None  # index of the message that the next `send` replaces
        self.attachments: list[Attachment] = []  # files for the next message (`/read`, attachments.py)
        self.undone: list[list[Turn]] = []  # exchanges taken back by `undo`, newest last, for `redo`
        # The backend a reply streams from, and those let go meanwhile: closed when it ends. A
        # front end may switch models while a reply streams (the TUI loads in a worker).
        self._backend_lock = threading.Lock()
        self._streaming_from: ChatBackend | None = None
        self._let_go: list[ChatBackend] = []

    # -- the backend -------------------------------------------------------------------------

    def use_backend(self, backend: ChatBackend | None) -> None:
        """Reply with `backend` from now on, and close the one it replaces: now, or when the
        reply streaming from it ends (the reply finishes on the backend it started on)."""
        with self._backend_lock:
            old, self.backend = self.backend, backend
            if old is None or old is backend:
                return
            if old is self._streaming_from:
                self._let_go.append(old)
                return
        old.close()

    def close(self) -> None:
        """The front end is done: stop the reply in flight and close the backend (after that
        reply has ended)."""
        self.stop()
        self.use_backend(None)

    # -- replies (run these in a worker thread) ------------------------------------------------

    def send(self, text: str, *, inspect: int = 0) -> Iterator[Event]:
        """Add a user message and stream the reply. While editing (start_edit), the message
        replaces the one being edited instead (see submit_edit)."""
        if self.editing is not None:
            return self.submit_edit(text, inspect=inspect) or iter(())
        text = clean_message(with_attachments(text, self.attachments) if self.attachments and text.strip() else text)
        self.attachments = []  # sent: they are part of the message now
        self.undone.clear()  # the chat moved on: what was undone no longer fits back
        sent = self.conversation.add("user", text)
        self.save()
        return self._reply(inspect, sent)

    def regenerate(self, *, inspect: int = 0) -> Iterator[Event]:
        """A new version of the last reply; the old one stays as an alternative."""
        turns = self.conversation.turns
        if not turns:
            raise ValueError("nothing to regenerate yet")
        self._check_backend()
        self.editing = None
        if turns[-1].role == "assistant":
            self.conversation.branch_at(len(turns) - 1)
        return self._reply(inspect)

    def continue_reply(self, *, inspect: int = 0) -> Iterator[Event]:
        """Generate more of the last reply (cut at max_new_tokens, stopped, or edited), appended
        to the same message. Raises ValueError (one line) when it cannot."""
        self.conversation.up_to_last_reply()  # raises when the last message is not a reply
        backend = self._check_backend()
        self.editing = None
        self.cancel.clear()
        events = backend.continue_reply(self.conversation, self.settings, cancel=self.cancel, inspect=inspect)
        return self._relay(backend, events, self.conversation, extend_reply)

    def _check_backend(self) -> ChatBackend:
        if self.backend is None:
            raise ValueError("no model is loaded yet")
        return self.backend

    def _reply(self, inspect: int, sent: Turn | None = None) -> Iterator[Event]:
        backend = self._check_backend()
        self.cancel.clear()
        conversation = self.conversation  # the reply belongs here even if /clear runs meanwhile
        events = backend.reply(conversation, self.settings, cancel=self.cancel, inspect=inspect)
        return self._relay(backend, events, conversation, add_reply, sent)

    def _relay(self, backend: ChatBackend, events: Iterator[Event], conversation: Conversation,
               record: Callable[[Conversation, Finished], Turn], sent: Turn | None = None) -> Iterator[Event]:
        """Pass the events of `backend` on, recording the turn they end with. When the prompt
        cannot even be built for a message just sent (the model's template or tokenizer fails on
        it, before any event), the message is taken back out, so that it cannot fail every later
        turn too, and the error says so."""
        with self._backend_lock:  # now, not when the events start: a switch meanwhile must wait too
            self._streaming_from = backend
        return self._relayed(backend, events, conversation, record, sent)

    def _relayed(self, backend, events, conversation, record, sent) -> Iterator[Event]:
        finished = started = False
        try:
            for event in events:
                started = True
                if isinstance(event, Finished):  # before it is passed on: consumers see the turn
                    record(conversation, event)
                    conversation.model = backend.info.name
                    finished = True
                yield event
        except ValueError as e:
            if started or not _prompt_failure(e) or not conversation.turns or conversation.turns[-1] is not sent:
                raise
            conversation.turns.pop()
            conversation.context_start = min(conversation.context_start, len(conversation.turns))
            raise MessageNotSent(str(e)) from e
        finally:
            if not finished:  # the reply never came: a regenerated one's old version is shown again
                conversation.cancel_branch()
            self.save()
            with self._backend_lock:
                if self._streaming_from is backend:  # (a later reply's is not this one's to clear)
                    self._streaming_from = None
                let_go = backend in self._let_go  # replaced while this reply streamed from it
                if let_go:
                    self._let_go.remove(backend)
            if let_go:
                backend.close()

    def stop(self) -> None:
        """Ask the reply in flight to stop; it ends within one decode step."""
        self.cancel.set()

    # -- editing -------------------------------------------------------------------------------

    def undo(self) -> list[Turn]:
        """Remove the last exchange (user message and reply) and return it ([] when there is
        none); `redo` puts it back until the next message is sent."""
        self.editing = None
        removed = self.conversation.pop_exchange()
        if removed:
            self.undone.append(removed)
        self.save()
        return removed

    def redo(self) -> list[Turn]:
        """Put back the exchange the last `undo` removed ([] when there is none)."""
        if not self.undone:
            return []
        self.editing = None
        self.conversation.cancel_branch()
        restored = self.undone.pop()
        self.conversation.turns.extend(restored)
        self.save()
        return restored

    def last_user_index(self) -> int | None:
        return next((i for i in range(len(self.conversation.turns) - 1, -1, -1)
                     if self.conversation.turns[i].role == "user"), None)

    def start_edit(self, index: int) -> str:
        """Edit message `index` (0-based): return its text; the next `send` replaces it."""
        if not 0 <= index < len(self.conversation.turns):
            raise ValueError(f"no message {index + 1}; messages are numbered 1 to {len(self.conversation.turns)}")
        self.editing = index
        return self.conversation.turns[index].text

    def submit_edit(self, text: str, *, inspect: int = 0) -> Iterator[Event] | None:
        """Replace the message being edited with `text`: everything after it becomes the other
        branch of an alternative. A user message gets a new reply (returned as events); an
        assistant message is only replaced (None), ready to be continued."""
        index, self.editing = self.editing, None
        if index is None or index >= len(self.conversation.turns):
            raise ValueError("no message is being edited")
        role = self.conversation.turns[index].role
        text = clean_message(text)
        if role == "user":
            self._check_backend()
        self.conversation.branch_at(index)
        self.conversation.add(role, text)
        self.save()
        return self._reply(inspect) if role == "user" else None

    def cancel_edit(self) -> None:
        self.editing = None

    def switch_alternative(self, index: int, step: int) -> bool:
        """Show another version of message `index` and the branch that follows it."""
        self.editing = None
        switched = self.conversation.switch(index, step)
        if switched:
            self.save()
        return switched

    def clear(self) -> None:
        """Start a new conversation (the old one stays saved), keeping the system prompt."""
        self.editing = None
        self.undone.clear()
        self.conversation = Conversation(system=self.conversation.system)

    def set_system(self, text: str) -> None:
        self.conversation.system = text.strip()
        self.save()

    def load_conversation(self, conversation: Conversation) -> None:
        self.editing = None
        self.undone.clear()
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

    @property
    def save_failure(self) -> str:
        """The last autosave failure, "" while saving works (the TUI keeps it in its status bar)."""
        return self._save_failure

    def save(self) -> None:
        """Autosave; a failure is a warning (once per kind of failure), never an exception."""
        if self.store is None or not self.autosave or not self.conversation.turns:
            return
        try:
            notice = self.store.claim(self.conversation)
            path = self.store.save(self.conversation)
        except (OSError, ValueError) as e:  # ValueError: a bug, but never worth a lost reply
            where = getattr(e, "filename", None) or self.store.folder  # a ValueError has neither
            reason = getattr(e, "strerror", None) or e
            failure = (f"autosave failed: {where}: {reason}; the conversation is kept in memory "
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


def _prompt_failure(e: ValueError) -> bool:
    """The model's template or tokenizer failed on the conversation (a server's failure is not
    one: unreachable or refusing, /retry may mend it)."""
    from ..engine.tokenizer import TokenizerError  # loaded by then; imported here to keep tiktoken off start-up

    return isinstance(e, (TemplateError, TokenizerError))


def add_reply(conversation: Conversation, done: Finished) -> Turn:
    """Append the assistant turn a stream ended with: its text, whether it was cut short and why,
    and, when the backend keeps token ids, the ids it occupies in the context."""
    turn = conversation.add("assistant", done.text.strip(), thinking=done.thinking,
                            thinking_tokens=done.thinking_tokens)
    _record_end(turn, done)
    return turn


def extend_reply(conversation: Conversation, done: Finished) -> Turn:
    """Append a continuation to the last (assistant) turn: more text, and how it ended now."""
    turn = conversation.turns[-1]
    turn.text = (turn.text + done.text).rstrip()  # the prompt ended at the stripped text
    turn.ids = None  # the old ids stand for the shorter text
    if done.thinking:  # the reply had been cut inside its reasoning
        turn.thinking = f"{turn.thinking}\n{done.thinking}".strip()
        turn.thinking_tokens += done.thinking_tokens
    _record_end(turn, done)
    return turn


def _record_end(turn: Turn, done: Finished) -> None:
    turn.stopped = done.stop_reason in ("cancelled", "error")
    turn.note = {"cancelled": "stopped", "length": "cut at max_new_tokens"}.get(done.stop_reason, "")
    if done.error:
        turn.note = f"error: {done.error}"
    if done.context_ids:
        turn.ids, turn.ids_key = list(done.context_ids), done.ids_key


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
