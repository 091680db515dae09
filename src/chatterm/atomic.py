"""The one way chatterm replaces a file: write a temporary file beside it, fsync, rename over it.

A crash at any moment leaves the old or the new version, never half of one. The file it replaces
keeps its permissions, and its owner and group where this process may set them (root replacing
another user's file); a new file gets `new_mode` (default: mkstemp's 0600, private). A rename
gives the path a new inode: other hard links to the old file keep the old content. A process
killed between writing and renaming (SIGKILL, power loss) leaves its `.<name>.<random>.tmp`:
`remove_stray_temporaries(path)` removes those of one file once they are older than any write
takes (the conversation store, which knows who is writing, cleans its own folder itself). Imports
nothing from chatterm, so every layer can use it: conversations, exports and the config
(`session/persistence.atomic_write_text`), checkpoints (`model/checkpoint.py`), training state.
"""

from __future__ import annotations

import contextlib
import glob
import os
import stat
import tempfile
import time
from pathlib import Path
from typing import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], *, new_mode: int | None = None) -> Path:
    """Replace `path` with what `write(temporary_path)` writes there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        old = os.stat(path)
        mode, owner = stat.S_IMODE(old.st_mode), (old.st_uid, old.st_gid)
    except (FileNotFoundError, NotADirectoryError):
        mode, owner = new_mode, None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as f:
            if owner is not None and owner != (os.geteuid(), os.getegid()):
                try:  # before the mode: chown clears the set-user-ID bits
                    os.fchown(f.fileno(), *owner)
                except OSError:  # only root may give a file away; the user's own group may do
                    with contextlib.suppress(OSError):
                        os.fchown(f.fileno(), -1, owner[1])
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


STRAY_AGE_SECONDS = 600  # far longer than a write takes: an older temporary file is a leftover


def remove_stray_temporaries(path: str | os.PathLike, *, older_than: float = STRAY_AGE_SECONDS) -> list[Path]:
    """Remove what interrupted `atomic_write(path)` calls left beside `path`; never raises."""
    path = Path(path)
    removed = []
    try:
        candidates = list(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))
    except OSError:
        return removed
    now = time.time()
    for candidate in candidates:
        try:
            info = os.lstat(candidate)
            if stat.S_ISREG(info.st_mode) and now - info.st_mtime > older_than:
                candidate.unlink()
                removed.append(candidate)
        except OSError:
            pass
    return removed
