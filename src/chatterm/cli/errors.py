"""How a command ends: errors a user can cause (a bad path, a broken checkpoint, an absurd
setting) end with one line on stderr and exit code 2; tracebacks are only for bugs.

Faults of the surroundings are not bugs either: a closed stdin/stdout/stderr reads as empty /
writes nowhere, invalid UTF-8 on stdin is replaced, and a reader that closes the pipe early
(`| head -c 1`) ends the program quietly (exit code 141, as if by SIGPIPE). Ctrl+C outside a
chat's own handling is exit code 130.
"""

from __future__ import annotations

import os
import signal
import sys

from .. import notices


class UserError(Exception):
    """Ends the program with a one-line message and exit code 2."""


def run_command(command, args) -> int:
    """`command(args)`'s exit code; what a user or the surroundings can cause ends as above."""
    try:
        return int(command(args) or 0)
    except UserError as e:
        return _error(e)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _pipe_closed()
    except Exception as e:  # user-caused errors from the lower layers carry one-line messages
        from ..model.errors import CheckpointError

        if isinstance(e, (CheckpointError, FileNotFoundError)):
            return _error(e)
        raise


def _error(e: BaseException) -> int:
    from ..model.errors import first_line

    notices.error(first_line(e))
    return 2


def tolerant_standard_streams() -> None:
    """A closed fd 0-2 gets /dev/null (else the next file we open would take its number, and a
    stray write would land in a conversation); undecodable input is replaced, not fatal."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # takes the lowest free number: this one
        stream = getattr(sys, name)  # None when the fd was closed at startup; else leave it be
        if stream is None:
            setattr(sys, name, open(os.devnull, mode, encoding="utf-8"))
        elif hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")


def _pipe_closed() -> int:
    """The reader went away: say nothing more (even the final flush must not complain)."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 128 + signal.SIGPIPE
