"""Saved chats as a user names them: by number in the list last shown, by id, or by path.

`SavedChats(session)` works on the session's `ConversationStore` (the autosave folder) for the
chats list (`/chats`, `chatterm --resume`), `/load N|ID|PATH`, `chatterm -c`, rename and delete.
A reference is resolved in this order: a number is a line of the list last shown (or of the
recent chats, if none was shown); an id names `<id>.json` in the store; anything else is a path.
Loading never changes or moves the file it reads (`read_conversation`); a chat another chatterm
has open is continued in a copy (the store's lock), and is never renamed or deleted. A file from
outside the store (a `/save` copy) whose id the store already holds is continued under a new id:
autosave would otherwise overwrite the store's newer file with the older copy's turns.
"""

from __future__ import annotations

import time
from pathlib import Path

from .chat import ChatSession
from .chats.conversation import is_valid_id, new_conversation_id
from .chats.persistence import ChatSummary, NotAConversationError, read_conversation
from .sanitize import printable

LIST_LENGTH = 30  # chats shown by /chats and --resume


class SavedChats:
    def __init__(self, session: ChatSession) -> None:
        self.session = session
        self.listed: list[ChatSummary] = []  # the list last shown, for `/load N`

    @property
    def store(self):
        if self.session.store is None:
            raise ValueError("autosave is off, so there are no saved chats")
        return self.session.store

    def recent(self, limit: int = LIST_LENGTH, query: str = "") -> list[ChatSummary]:
        """The recent chats, newest first (with `query`: those whose title or messages hold it);
        this becomes the list `/load N` counts in."""
        self.listed = self.store.list_chats(limit, query)
        return self.listed

    def resolve(self, ref: str) -> Path:
        """The file a reference names (ValueError, one line, when it names none)."""
        ref = ref.strip()
        if ref.isdigit() and len(ref) < 6:
            listed = self.listed or self.recent()
            if not 1 <= int(ref) <= len(listed):
                raise ValueError(f"no chat number {ref}: /chats lists {len(listed)}")
            return self.store.file_for(listed[int(ref) - 1].id)
        if is_valid_id(ref) and self.session.store is not None:
            path = self.store.file_for(ref)
            if path.is_file():
                return path
        return Path(ref).expanduser()

    def open(self, ref: str) -> str:
        """Make the chat `ref` names the session's conversation; returns a line saying what was loaded."""
        path = self.resolve(ref)
        conversation = read_conversation(path)
        own = self._is_own(path)
        forked = ""
        if not own and self.session.store is not None and self.store.file_for(conversation.id).exists():
            old, conversation.id = conversation.id, new_conversation_id()
            forked = f" (saved chat {old} is kept as it is; this copy continues as {conversation.id})"
        self.session.load_conversation(conversation)
        where = conversation.id if own else str(path)
        return f"loaded {len(conversation.turns)} turns from {where}: {summary_title(conversation.title)}{forked}"

    def open_latest(self) -> str:
        """Continue the most recent readable chat (`chatterm -c`)."""
        latest = self.store.list_chats(1)
        if not latest:
            raise ValueError(f"no saved chats yet in {self.store.folder}")
        return self.open(latest[0].id)

    def rename(self, ref: str, name: str) -> str:
        chat_id = self._own_id(ref)
        if chat_id == self.session.conversation.id:  # the open chat: its next autosave keeps the name
            self.session.conversation.name = " ".join(name.split())
            self.session.save()
        else:
            self._let_go_of_closed_chat()
            self.store.rename(chat_id, name)
        return f"renamed {chat_id}: {summary_title(name) or '(first message)'}"

    def delete(self, ref: str) -> str:
        chat_id = self._own_id(ref)
        if chat_id == self.session.conversation.id and self.session.conversation.turns:
            raise ValueError(f"chat {chat_id} is the one open here; start a new chat (/clear) first")
        self._let_go_of_closed_chat()
        self.store.delete(chat_id)
        self.listed = [c for c in self.listed if c.id != chat_id]
        return f"deleted chat {chat_id}"

    def _own_id(self, ref: str) -> str:
        path = self.resolve(ref)
        if not self._is_own(path):
            raise NotAConversationError(f"{ref}: not a saved chat; /chats lists them")
        return path.stem

    def _is_own(self, path: Path) -> bool:
        store = self.session.store
        return (store is not None and path.suffix == ".json" and is_valid_id(path.stem)
                and path.parent.resolve() == store.folder.resolve())

    def _let_go_of_closed_chat(self) -> None:
        """After /clear the store still holds the previous chat's lock until the new one is saved;
        that chat is no longer open here, so it may be renamed or deleted."""
        held = self.store.lock.held
        if held and held[0] != self.session.conversation.id:
            self.store.lock.release()


def summary_title(text: str, width: int = 60) -> str:
    """`text` made inert, on one line, cut to `width` characters."""
    text = " ".join(printable(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def when(timestamp: float, now: float | None = None) -> str:
    """A short date for the chats list: the time today, else the day (and year when not this one)."""
    now = time.time() if now is None else now
    t, today = time.localtime(timestamp), time.localtime(now)
    if t[:3] == today[:3]:
        return time.strftime("%H:%M", t)
    return time.strftime("%d %b" if t.tm_year == today.tm_year else "%d %b %Y", t)


def chat_line(number: int, chat: ChatSummary, width: int = 80) -> str:
    """`  3  12 Nov       parrot           hello there` (number, date, model, title), cut to `width`."""
    head = f"{number:>3}  {when(chat.modified):<11} {summary_title(chat.model, 16):<16} "
    title = f"{chat.title} · {chat.found}" if chat.found else chat.title
    return head + summary_title(title, max(10, width - len(head)))
