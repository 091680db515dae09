"""Files on disk: atomic writes, the user's own files left alone, conversations autosaved.

- `atomic_write_text` is the one way chatterm writes a text file (conversations, exports, the
  config): a temporary file in the same folder, fsynced, renamed over the old one, so a crash at
  any moment leaves the old or the new version, never half of one. A file it replaces keeps its
  permissions.
- `write_user_file` is for paths the user typed (`/save PATH`, `/export PATH`): an existing file is
  replaced only with `force`; a symlink, folder, FIFO or device is never written to.
- `read_conversation` reads any path the user names (`/load PATH`) and never changes it: anything
  but a regular file holding a conversation's JSON is one line, "PATH: not a chatterm conversation".
  It never blocks: the type is checked before opening, and the open is non-blocking.
- `ConversationStore` is the autosave folder: files named by the conversation's id (validated, so
  no path built from one leaves the folder). Its files are read like any other (`/load N|ID` goes
  through `read_conversation`): a damaged one is one line and stays as it is. While a process has
  a conversation open it holds an advisory lock on its id (see conversation_lock.py); a second
  process that continues the same conversation forks a copy under a new id, so neither loses the
  other's turns. Stray temporary files of interrupted saves are removed when a store is opened.
  `list_chats` summarizes the recent ones (title made inert, one line, cut); `rename` and
  `delete` act only on the store's own `<id>.json` files, and only while no chatterm has that
  conversation open (the lock is held for the moment they take).
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from ...atomic import atomic_write
from ...regular_file import NotRegularFileError, read_regular
from ..sanitize import decode_json, printable
from .conversation import Conversation, is_valid_id, new_conversation_id
from .conversation_lock import ConversationLock

MAX_CONVERSATION_BYTES = 256 * 1024 * 1024  # far above any real chat; stops a stray 10 GB file
_SPECIAL_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
                  (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"))


class NotAConversationError(ValueError):
    """A file that is not a readable chatterm conversation; it has not been touched."""


class FileRefusedError(ValueError):
    """A path chatterm will not write to (exists without --force, or is not a regular file)."""


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Replace `path` with `text` atomically (see atomic.py). A replaced file keeps its mode; a
    new one is private to the user (0600), like the conversations and settings it mostly holds."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _kind(mode: int) -> str | None:
    """"a folder", "a FIFO", ... for anything that is not a regular file; None for one."""
    return next((name for check, name in _SPECIAL_KINDS if check(mode)), None)


def write_user_file(path: str | os.PathLike, text: str, *, force: bool = False) -> Path:
    """Write `text` to a path the user named: never through a symlink, never onto a folder,
    FIFO or device, and onto an existing file only with `force` (its permissions are kept)."""
    path = Path(path).expanduser()
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        mode = None
    if mode is not None:
        kind = _kind(mode)
        if kind is not None:
            raise FileRefusedError(f"{path}: is {kind}; chatterm only writes regular files, choose another path")
        if not force:
            raise FileRefusedError(f"{path}: already exists; add --force to replace it")
    elif not path.parent.is_dir():  # a typo must not become new folders (as a shell's `>` would not)
        what = "is not a folder" if path.parent.exists() else "does not exist"
        raise FileRefusedError(f"{path}: the folder {path.parent} {what}; choose another path")
    return atomic_write_text(path, text)


def read_conversation(path: str | os.PathLike) -> Conversation:
    """Read a saved conversation from any path; the file is never changed or moved."""
    path = Path(path).expanduser()
    not_one = NotAConversationError(f"{path}: not a chatterm conversation")
    try:  # a folder, FIFO or device is refused before it is opened (regular_file.py)
        data = read_regular(path, MAX_CONVERSATION_BYTES)
    except FileNotFoundError:
        raise NotAConversationError(f"{path}: no such file") from None
    except NotRegularFileError:
        raise not_one from None
    except OSError as e:
        raise NotAConversationError(f"{path}: cannot read it ({e.strerror})") from None
    try:
        return Conversation.from_dict(decode_json(data.decode("utf-8")))
    except (UnicodeDecodeError, ValueError, TypeError, AttributeError, RecursionError):
        raise not_one from None


def write_conversation(path: str | os.PathLike, conversation: Conversation, *, force: bool = False) -> Path:
    """Save to a path the user named (`/save PATH`): see write_user_file."""
    return write_user_file(path, conversation_json(conversation), force=force)


def conversation_json(conversation: Conversation) -> str:
    # No indent: json's C encoder only runs without one, and a long chat is saved every turn.
    text = json.dumps(conversation.to_dict(), ensure_ascii=False, separators=(",", ":"))
    # json escapes C0 controls only; DEL and the C1 controls (U+009B is CSI to some terminals)
    # are escaped too, so `cat` of a saved chat is inert. They only stand inside strings, where
    # an escape is still valid JSON.
    return _DEL_AND_C1.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


_DEL_AND_C1 = re.compile("[\x7f-\x9f]")


@dataclass(frozen=True)
class ChatSummary:
    """One line of the chats list."""

    id: str
    title: str  # the name given, else the first message: inert, one line, at most ~60 characters
    modified: float  # when it was last saved (seconds since the epoch)
    model: str  # the model that last replied ("" when unknown)
    turns: int
    found: str = ""  # when filtered by text found in a message, not the title: the words around it


def _found_in(conversation: Conversation, title: str, query: str) -> str | None:
    """Where `query` (any case, spaces loose) is in a chat: "" in its title, the words around it
    in the first message that holds it, None when nowhere."""
    words = query.casefold().split()
    if all(w in title.casefold() for w in words):
        return ""
    for text in [conversation.system, *(t.text for t in conversation.turns)]:
        flat = " ".join(printable(text).split())
        folded = flat.casefold()
        if all(w in folded for w in words):
            at = folded.find(words[0])
            start = max(0, at - 20)
            return ("…" if start else "") + flat[start : start + 60].strip()
    return None


class ConversationStore:
    """The folder of autosaved conversations, one `<id>.json` each."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.lock = ConversationLock(self.folder / ".locks")
        # Chats read for the list, by file, with the (mtime, size) they were read at: the chats
        # list's filter searches every saved chat at each keystroke, and reads only what changed.
        self._read: dict[Path, tuple[tuple[int, int], Conversation]] = {}
        self.clean_stray_files()

    def path_for(self, conversation: Conversation) -> Path:
        """`<folder>/<id>.json`; an id that is not chatterm's own kind is refused (ValueError)."""
        if not is_valid_id(conversation.id):
            raise ValueError(f"conversation id {conversation.id!r:.60} is not one chatterm made")
        # The id's characters cannot name another folder. A symlink someone put at this name is
        # replaced by the file (atomic_write renames over the link), never written through.
        return self.folder / f"{conversation.id}.json"

    def claim(self, conversation: Conversation) -> str:
        """Hold this conversation's lock from now until another is claimed. If another chatterm
        has it open, the conversation gets a new id (a copy) and the returned line says so."""
        if not is_valid_id(conversation.id):
            conversation.id = new_conversation_id()
        holder = self.lock.acquire(conversation.id)
        if holder is None:
            return ""
        old, conversation.id = conversation.id, new_conversation_id()
        self.lock.acquire(conversation.id)
        return (f"conversation {old} is open in another chatterm{holder}; "
                f"continuing in a copy, {conversation.id}, so neither loses turns")

    def save(self, conversation: Conversation) -> Path:
        """Autosave (claims the conversation first; call `claim` yourself to hear of a fork)."""
        self.claim(conversation)
        return atomic_write_text(self.path_for(conversation), conversation_json(conversation))

    def recent(self, limit: int | None = 20) -> list[Path]:
        if not self.folder.is_dir():
            return []
        files = [p for p in self.folder.glob("*.json") if is_valid_id(p.stem) and p.is_file()]
        return sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)[:limit]

    def file_for(self, conversation_id: str) -> Path:
        """The store's own file for an id (ValueError for an id chatterm did not make)."""
        return self.path_for(Conversation(id=conversation_id))

    def list_chats(self, limit: int = 50, query: str = "") -> list[ChatSummary]:
        """The most recently saved chats, newest first; unreadable files are left out (and alone).
        With `query`, only the chats whose title or messages hold it (any case), from all of them."""
        chats = []
        for path in self.recent(limit if not query.strip() else None):
            try:
                conversation, modified = self._read_for_list(path)
            except (NotAConversationError, OSError):
                continue
            title = " ".join(printable(conversation.title).split())
            found = ""
            if query.strip():
                found = _found_in(conversation, title, query)
                if found is None:
                    continue
            chats.append(ChatSummary(path.stem, title, modified, " ".join(printable(conversation.model).split()),
                                     len(conversation.turns), found))
            if len(chats) == limit:
                break
        return chats

    def _read_for_list(self, path: Path) -> tuple[Conversation, float]:
        """The conversation in `path` and when it was saved; read again only if the file changed."""
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        cached = self._read.get(path)
        if cached is None or cached[0] != stamp:
            cached = self._read[path] = (stamp, read_conversation(path))
        return cached[1], stat.st_mtime

    def _own_file(self, conversation_id: str) -> Path:
        path = self.file_for(conversation_id)
        if path.is_symlink() or not path.is_file():
            raise NotAConversationError(f"no saved chat {conversation_id} in {self.folder}")
        return path

    def rename(self, conversation_id: str, name: str) -> None:
        """Give a saved chat a title. Refused (ValueError) while a chatterm has it open: that one
        would overwrite the title at its next save (rename the open chat through its session)."""
        path = self._own_file(conversation_id)

        def write() -> None:
            conversation = read_conversation(path)
            conversation.name = " ".join(name.split())
            modified = path.stat()
            atomic_write_text(path, conversation_json(conversation))
            os.utime(path, ns=(modified.st_atime_ns, modified.st_mtime_ns))  # the list keeps its order

        self._while_closed(conversation_id, write, "renamed")

    def delete(self, conversation_id: str) -> None:
        """Delete a saved chat's file: only the store's own `<id>.json`, only while no chatterm
        (this one included) has the conversation open."""
        path = self._own_file(conversation_id)
        self._while_closed(conversation_id, path.unlink, "deleted")
        self._read.pop(path, None)

    def _while_closed(self, conversation_id: str, action, what: str) -> None:
        holder = self.lock.while_free(conversation_id, action)
        if holder == " (this chatterm)":
            raise ValueError(f"chat {conversation_id} is the one open here; start a new chat first")
        if holder is not None:
            raise ValueError(f"chat {conversation_id} is open in another chatterm{holder}; not {what}")

    def clean_stray_files(self) -> list[Path]:
        """Remove temporary files left by saves that were interrupted (`.<id>.json.*.tmp`) whose
        conversation no other chatterm has open; also unused lock files. Returns what went."""
        removed = []
        try:
            strays = [p for p in self.folder.glob(".*.json.*.tmp") if p.is_file() and not p.is_symlink()]
        except OSError:
            return removed
        for stray in strays:
            conversation_id = stray.name[1:].split(".json.", 1)[0]
            if is_valid_id(conversation_id) and self.lock.is_free(conversation_id):
                try:
                    stray.unlink()
                    removed.append(stray)
                except OSError:
                    pass
        self.lock.remove_unused()
        return removed

    def close(self) -> None:
        """Give up the lock on the current conversation (also happens when the process ends)."""
        self.lock.release()
