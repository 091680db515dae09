"""The one way chatterm replaces a file: write a temporary file beside it, fsync, rename over it.

A crash at any moment leaves the old or the new version, never half of one. The file it replaces
keeps its permissions; a new file gets `new_mode` (default: mkstemp's 0600, private). Imports
nothing from chatterm, so every layer can use it: conversations, exports and the config
(`session/persistence.atomic_write_text`), checkpoints (`model/checkpoint.py`), training state.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], *, new_mode: int | None = None) -> Path:
    """Replace `path` with what `write(temporary_path)` writes there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        mode = new_mode
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
