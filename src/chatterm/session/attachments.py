"""Files attached to the next message (`/read PATH...`, globs too), as llama-cli's `/read`,
aichat's `.file` and oterm do.

`read_files(args)` expands each argument (`~`, globs such as `src/*.py`) and reads every match as
UTF-8 text, at most MAX_FILE_BYTES each; a folder, a binary file (a NUL byte, or not UTF-8), an
unreadable or missing one is refused with one line, and the others are still attached. The files
are strangers' input: their text is made inert (`printable`: no escape sequence or control
character) before it joins a message, is shown, or is saved.

`with_attachments(text, files)` is the message the model sees: what was typed, then each file
fenced with its name, the fence longer than any run of backticks inside. It is stored as the
user turn's text, so the files are saved, exported and counted with the chat like anything typed.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..regular_file import NotRegularFileError, read_regular
from .sanitize import printable

MAX_FILE_BYTES = 100_000  # per file; a whole message is capped at chats/conversation.py MAX_MESSAGE_CHARS


@dataclass(frozen=True)
class Attachment:
    name: str  # as the user wrote it (or the glob matched it), for the fence and the notes
    text: str  # inert UTF-8 text
    size: int  # bytes on disk


def read_files(args: list[str]) -> tuple[list[Attachment], list[str]]:
    """The attachments the arguments name, and one problem line per refused file or pattern."""
    found: list[Attachment] = []
    problems: list[str] = []
    for arg in args:
        pattern = os.path.expanduser(arg)
        names = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        if not names:
            problems.append(f"{arg}: no file matches")
        for name in names:
            try:
                found.append(read_one(name))
            except (OSError, ValueError) as e:
                problems.append(str(e))
    return found, problems


def read_one(name: str) -> Attachment:
    """One text file as an Attachment; ValueError or OSError with one line otherwise."""
    shown = printable(name)
    try:
        data = read_regular(Path(name), MAX_FILE_BYTES)
    except NotRegularFileError as e:
        reason = str(e).split(": ", 1)[-1]
        if "too large" in reason:
            reason = f"larger than {MAX_FILE_BYTES:,} bytes, the most a file attached to a message may be"
        raise ValueError(f"{shown}: {reason}; not attached") from None
    except FileNotFoundError:
        raise ValueError(f"{shown}: no such file") from None
    except OSError as e:
        raise ValueError(f"{shown}: cannot read it ({e.strerror or e}); not attached") from None
    if b"\0" in data:
        raise ValueError(f"{shown}: a binary file, not text; not attached")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{shown}: not UTF-8 text (a binary file?); not attached") from None
    return Attachment(name=shown, text=printable(text), size=len(data))


def fenced(attachment: Attachment) -> str:
    """The file in a Markdown fence named after it, longer than any backtick run inside."""
    longest = max((len(run) for run in re.findall(r"`+", attachment.text)), default=0)
    fence = "`" * max(3, longest + 1)
    body = attachment.text if attachment.text.endswith("\n") else attachment.text + "\n"
    return f"{fence}{attachment.name}\n{body}{fence}"


def with_attachments(text: str, files: list[Attachment]) -> str:
    """The message with its files after what was typed (see the module doc)."""
    return "\n\n".join([text.strip(), *map(fenced, files)]).strip()
