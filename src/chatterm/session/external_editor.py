"""Compose a message in the user's own editor (`/editor`, Ctrl+G in the TUI).

`compose_in_editor(text)` writes `text` to a private temporary file, runs $VISUAL, else $EDITOR,
else the first of vi and nano found on PATH, waits for it to exit, and returns what the file then
holds (one trailing newline dropped, as editors add one). The variables may hold arguments
(`EDITOR="code --wait"`). The temporary file is removed afterwards. Every failure is a
ValueError with one line: no editor, an editor that cannot be started or that exits with an
error. The caller hands over the terminal first (the TUI suspends itself); nothing here knows
about terminals or Textual.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile

FALLBACK_EDITORS = ("vi", "nano")


def editor_command() -> list[str]:
    """The editor to run, as an argument list; ValueError if there is none."""
    for variable in ("VISUAL", "EDITOR"):
        value = os.environ.get(variable, "").strip()
        if value:
            try:
                command = shlex.split(value)
            except ValueError as e:
                raise ValueError(f"${variable} ({value!r}) cannot be parsed: {e}") from None
            if command:
                return command
    for name in FALLBACK_EDITORS:
        if shutil.which(name):
            return [name]
    raise ValueError("no editor found: set $EDITOR (or $VISUAL), e.g. export EDITOR=nano")


def compose_in_editor(text: str = "") -> str:
    """Edit `text` in the user's editor and return the result (see the module doc)."""
    command = editor_command()
    fd, path = tempfile.mkstemp(prefix="chatterm-message-", suffix=".md")  # 0600: may hold private text
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            result = subprocess.run([*command, path], check=False)
        except OSError as e:
            raise ValueError(f"cannot run the editor {command[0]!r}: {e.strerror or e}") from None
        if result.returncode != 0:
            raise ValueError(f"the editor {command[0]!r} exited with status {result.returncode}; the message is unchanged")
        with open(path, encoding="utf-8", errors="replace") as f:
            edited = f.read()
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
    return edited[:-1] if edited.endswith("\n") else edited
