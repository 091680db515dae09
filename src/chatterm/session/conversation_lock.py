"""Which chatterm process has a conversation open: one advisory lock file per conversation id.

`ConversationLock(folder).acquire(id)` takes `folder/<id>.lock` with `flock` (released by the
kernel when the process ends, however it ends) and holds it until another id is acquired or
`release()`; it returns None on success, or a short description of the holder (" (pid N)") when
another process (or another store in this one) has it. Lock files are removed by their holder on
release and, when unused, by the next store that opens the folder; after taking a lock we check
that the file we locked is still the one at that path, so removing one never lets two holders in.
Where `fcntl` does not exist (Windows), locking is skipped and every acquire succeeds.
"""

from __future__ import annotations

import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux or macOS
    fcntl = None


class ConversationLock:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.held: tuple[str, int] | None = None  # (conversation id, fd of its lock file)

    def _path(self, conversation_id: str) -> Path:
        return self.folder / f"{conversation_id}.lock"

    def _try(self, conversation_id: str) -> int | str:
        """The fd of the locked file, or who holds it (" (pid N)" or "")."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(conversation_id)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                os.close(fd)
                return f" (pid {holder})" if holder.isdigit() else ""
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)  # removed by its last holder between our open and lock: try again

    def acquire(self, conversation_id: str) -> str | None:
        if fcntl is None or (self.held and self.held[0] == conversation_id):
            return None
        got = self._try(conversation_id)
        if isinstance(got, str):
            return got
        os.ftruncate(got, 0)
        os.pwrite(got, str(os.getpid()).encode(), 0)
        self.release()
        self.held = (conversation_id, got)
        return None

    def release(self) -> None:
        if self.held is None:
            return
        conversation_id, fd = self.held
        self.held = None
        try:
            os.unlink(self._path(conversation_id))  # while still locked: see the module doc
        except OSError:
            pass
        os.close(fd)

    def is_free(self, conversation_id: str) -> bool:
        """Whether no process holds this id's lock (checked by taking it for a moment)."""
        return self.while_free(conversation_id, lambda: None) is None

    def while_free(self, conversation_id: str, action) -> str | None:
        """Run `action()` holding this id's lock for the moment (so no chatterm opens the conversation
        meanwhile); None when it ran, else who holds the lock (" (pid N)", "", or " (this chatterm)")."""
        if self.held and self.held[0] == conversation_id:
            return " (this chatterm)"
        if fcntl is None:
            action()
            return None
        try:
            got = self._try(conversation_id)
        except OSError as e:
            return f" (cannot check: {e.strerror or e})"
        if isinstance(got, str):
            return got
        try:
            action()
        finally:
            try:
                os.unlink(self._path(conversation_id))
            except OSError:
                pass
            os.close(got)
        return None

    def remove_unused(self) -> None:
        """Remove lock files nobody holds (left by a process that was killed)."""
        try:
            names = [p.name[: -len(".lock")] for p in self.folder.glob("*.lock")]
        except OSError:
            return
        for conversation_id in names:
            self.is_free(conversation_id)
