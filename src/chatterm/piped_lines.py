"""The plain REPL's input from a pipe or a file: its lines as they come, in a wait that any signal
ends at once.

Why not `for line in sys.stdin`: Python runs a signal's handler in the main thread between two
bytecodes. A signal that lands after the last of those and before the read() system call starts
(a Ctrl+C, a SIGTERM just as a reply ends) is noted, but read() then blocks until the next line,
and the handler (the quit) waits with it; a script that sends SIGINT right after "(stopped)"
could wait forever. Here the wait is a select() on stdin and on the pipe that Python's C-level
handler writes each signal's number to (`signal.set_wakeup_fd`, as asyncio does): a signal that
came before the wait still ends it, and its handler runs as soon as this returns to Python.

Where that cannot be set up (not the main thread, a stream without a file descriptor, Windows,
another wakeup fd in use) the stream is iterated as before.
"""

from __future__ import annotations

import codecs
import os
import select
import signal
import threading
from contextlib import contextmanager
from typing import Iterable, Iterator, TextIO

_CHUNK = 65536


def piped_lines(stream: TextIO) -> Iterable[str]:
    """`stream`'s lines, each with its "\\n" (the last one may have none)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # a StringIO, a closed stream
        return stream
    if os.name != "posix" or threading.current_thread() is not threading.main_thread():
        return stream
    return _lines(fd, getattr(stream, "encoding", None) or "utf-8", getattr(stream, "errors", None) or "strict")


def _lines(fd: int, encoding: str, errors: str) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder(encoding)(errors=errors)
    pending = ""
    with _woken_by_signals() as wakeup:
        while True:
            readable = select.select([fd] if wakeup is None else [fd, wakeup], [], [])[0]  # (EINTR: retried, PEP 475)
            if wakeup is not None and wakeup in readable:
                _drain(wakeup)  # the handler runs as this frame goes on: a KeyboardInterrupt ends it here
            if fd not in readable:
                continue
            data = os.read(fd, _CHUNK)
            pending += decoder.decode(data, final=not data)
            *complete, pending = pending.split("\n")
            for line in complete:
                yield line.removesuffix("\r") + "\n"  # as text mode reads "\r\n"
            if not data:
                break
    if pending:
        yield pending.removesuffix("\r")


@contextmanager
def _woken_by_signals() -> Iterator[int | None]:
    """The read end of a pipe that each signal writes a byte to, while the block runs; None where
    another wakeup fd is set (Textual's, asyncio's): then only a signal during select() ends it."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.set_blocking(write_end, False)  # set_wakeup_fd needs it: a full pipe must not block a handler
    try:
        previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        if previous != -1:  # someone else's: theirs stays
            signal.set_wakeup_fd(previous)
            yield None
            return
        try:
            yield read_end
        finally:
            signal.set_wakeup_fd(-1)
    finally:
        os.close(read_end)
        os.close(write_end)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, _CHUNK):
            pass
    except BlockingIOError:
        pass
