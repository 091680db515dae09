"""Errors a user can cause by pointing chatterm at the wrong file, and how foreign failures
become one of them.

Readers of untrusted files (torch's unpickler, safetensors, tokenizers) fail in many ways: Python
exceptions of every kind, and Rust panics, which pyo3 raises as `PanicException`, a subclass of
`BaseException` rather than `Exception`. `reading(path, what)` turns all of those into one
`CheckpointError` line naming the file, and lets KeyboardInterrupt and SystemExit through.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class CheckpointError(Exception):
    """A checkpoint could not be loaded. The message is one sentence naming the file and the fix."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none: the one
    formatter of a failure as a one-line message, for every layer (imports nothing heavy)."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def json_object(text: str, where) -> dict:
    """The JSON object in `text` (a metadata or config file); CheckpointError naming `where` for
    anything else: invalid JSON, nesting too deep to parse, or a value that is not an object."""
    import json

    try:
        data = json.loads(text)
    except (ValueError, TypeError, RecursionError) as e:
        raise CheckpointError(f"{where}: not valid JSON ({first_line(e)})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{where}: expected a JSON object")
    return data


def is_foreign_panic(e: BaseException) -> bool:
    """A Rust panic surfaced by pyo3 (each extension has its own `pyo3_runtime.PanicException`)."""
    return type(e).__name__ == "PanicException" and type(e).__module__ == "pyo3_runtime"


@contextmanager
def reading(path: str | Path, what: str = "checkpoint") -> Iterator[None]:
    """Any failure inside becomes `CheckpointError("PATH: cannot load <what> (<reason>)")`."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as e:  # untrusted bytes: any exception type can come out of a parser
        raise CheckpointError(f"{path}: cannot load {what} ({first_line(e)})") from e
    except BaseException as e:
        if is_foreign_panic(e):
            raise CheckpointError(f"{path}: cannot load {what} (its reader crashed: {first_line(e)})") from None
        raise
