"""Reading a file chatterm did not write, without ever blocking on it.

Opening a FIFO blocks until someone writes to it, and a device such as /dev/zero never ends, so
every file a user or a stranger can name (checkpoints and their config and tokenizer files,
conversations, themes, the config file) is checked with `stat` before it is opened, opened
non-blocking, and checked again on the open descriptor (it may have been swapped meanwhile).
Anything but a regular file is `NotRegularFileError`, an `OSError` whose message is one line
naming the path and what it is, so callers that already report OSError report this too. Imports
nothing from chatterm, so every layer can use it (as atomic.py for writing).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO


class NotRegularFileError(OSError):
    """A path that is a folder, FIFO, device or socket where a regular file was expected."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not a regular file"


def kind_of(mode: int) -> str | None:
    """"a folder", "a FIFO", "a device or socket"; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    return "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"


def check_regular(path: str | os.PathLike, *, folder_ok: bool = False) -> None:
    """Raise NotRegularFileError unless `path` is a regular file (or a folder, with `folder_ok`).
    A missing path raises FileNotFoundError as usual."""
    kind = kind_of(os.stat(path).st_mode)
    if kind is not None and not (folder_ok and kind == "a folder"):
        raise NotRegularFileError(f"{path}: is {kind}, not a regular file")


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """A binary file object for a regular file, opened without ever blocking."""
    check_regular(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    f = os.fdopen(fd, "rb")
    kind = kind_of(os.fstat(fd).st_mode)
    if kind is not None:  # swapped for something else since the check
        f.close()
        raise NotRegularFileError(f"{path}: is {kind}, not a regular file")
    return f


def read_regular(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (NotRegularFileError beyond)."""
    with open_regular(path) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise NotRegularFileError(f"{path}: more than {limit:,} bytes, too large for this kind of file")
    return data


def read_regular_text(path: str | os.PathLike, limit: int) -> str:
    """`read_regular` decoded as UTF-8 (UnicodeDecodeError as usual)."""
    return read_regular(Path(path), limit).decode("utf-8")
