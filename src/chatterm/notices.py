"""The lines chatterm writes to stderr about itself, one format for every text front end (the
commands, the plain REPL): `chatterm: warning: ...` and `chatterm: error: ...`, made inert
(`session/sanitize.py`), since what they quote (a path, a model's name, a server's answer) is
anyone's text."""

from __future__ import annotations

import sys


def warning_line(text: str) -> str:
    from .session.sanitize import printable  # not at import: the command line starts without the session

    return f"chatterm: warning: {printable(text)}"


def warn(text: str) -> None:
    print(warning_line(text), file=sys.stderr, flush=True)


def error(text: str) -> None:
    from .session.sanitize import printable

    print(f"chatterm: error: {printable(text)}", file=sys.stderr)
