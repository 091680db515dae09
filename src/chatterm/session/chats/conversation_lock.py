"""Which chatterm process has a conversation open: one advisory lock file per conversation id.

`ConversationLock(folder).acquire(id)` takes `folder/<id>.lock` with `flock` (released by the
kernel when the process ends, however it ends) and holds it until another id is acquired or
`release()`; it returns None on success, or a short description of the holder (" (pid N)") when
another process (or another store in this one) has it. Lock files are removed by their holder on
release and, when unused, by the next store that opens the folder; after taking a lock we check
that the file we locked is still the one at that path, so removing one never lets two holders in.
Where `fcntl` does not exist (Windows), locking is skipped and every acquire succeeds.

Removing lock files never reaches outside chatterm's own folder: the lock folder is opened without
following a symlink, and every file in it is opened, checked and removed relative to that open
folder, also without following one. A symlink put at the lock folder's place (pointing at another
program's folder of `*.lock` files, say) is removed, the link only, and a real folder made; a
symlink at a lock file's name is removed the same way, so what it pointed at is never locked,
truncated or deleted.
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux or macOS
    fcntl = None


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class ConversationLock:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.held: tuple[str, int] | None = None  # (conversation id, fd of its lock file)

    @staticmethod
    def _name(conversation_id: str) -> str:
        return f"{conversation_id}.lock"

    @contextmanager
    def _open_folder(self, create: bool = True):
        """The lock folder as an open fd, never through a symlink (see the module doc)."""
        flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW | _CLOEXEC
        if create:
            self.folder.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if create:
                try:
                    os.mkdir(self.folder, 0o700)
                except FileExistsError:
                    pass
            try:
                fd = os.open(self.folder, flags)
                break
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR) or not self.folder.is_symlink() or not create:
                    raise
                os.unlink(self.folder)  # a symlink in our data folder: the link goes, never its target
        else:
            raise OSError(errno.ELOOP, "the lock folder keeps being replaced by a symlink", str(self.folder))
        try:
            yield fd
        finally:
            os.close(fd)

    def _try(self, conversation_id: str) -> int | str:
        """The fd of the locked file, or who holds it (" (pid N)" or "")."""
        name = self._name(conversation_id)
        with self._open_folder() as folder:
            while True:
                try:
                    fd = os.open(name, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o600, dir_fd=folder)
                except OSError as e:
                    if e.errno != errno.ELOOP:
                        raise
                    os.unlink(name, dir_fd=folder)  # a symlink at our lock's name: the link goes
                    continue
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
                    same = os.fstat(fd).st_ino == os.stat(name, dir_fd=folder, follow_symlinks=False).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    return fd
                os.close(fd)  # removed by its last holder between our open and lock: try again

    def _remove(self, conversation_id: str) -> None:
        """Remove this id's lock file (we hold it), relative to the lock folder."""
        try:
            with self._open_folder(create=False) as folder:
                os.unlink(self._name(conversation_id), dir_fd=folder)
        except OSError:
            pass

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
        self._remove(conversation_id)  # while still locked: see the module doc
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
            self._remove(conversation_id)
            os.close(got)
        return None

    def remove_unused(self) -> None:
        """Remove lock files nobody holds (left by a process that was killed)."""
        if fcntl is None:
            return
        try:
            with self._open_folder(create=False) as folder:  # no folder yet: nothing to remove
                names = [name[: -len(".lock")] for name in os.listdir(folder) if name.endswith(".lock")]
        except OSError:
            return
        for conversation_id in names:
            self.is_free(conversation_id)
