"""Conversations on disk: atomic autosave, and nothing silently lost.

Each conversation is one JSON file named by its id in the user data directory. Writes go to a
temporary file in the same folder, are fsynced, then renamed over the old file, so a crash at
any moment leaves either the old or the new version, never half of one. A file that cannot be
read is moved aside (`*.corrupt-<time>`) and reported, never overwritten.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from .conversation import Conversation


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class CorruptFileError(ValueError):
    """A saved file could not be read; it has been moved aside."""


def read_conversation(path: Path) -> Conversation:
    """Read a saved conversation; a broken file is moved aside and reported (CorruptFileError)."""
    path = Path(path).expanduser()
    try:
        return Conversation.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError, TypeError, AttributeError) as e:
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            os.replace(path, aside)
        except OSError:
            aside = path
        raise CorruptFileError(f"{path}: not a readable conversation ({e}); kept as {aside.name}") from e


def write_conversation(path: Path, conversation: Conversation) -> Path:
    # No indent: json's C encoder only runs without one, and a long chat is saved every turn.
    text = json.dumps(conversation.to_dict(), ensure_ascii=False, separators=(",", ":"))
    atomic_write_text(Path(path).expanduser(), text)
    return Path(path)


class ConversationStore:
    """The folder of autosaved conversations."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path_for(self, conversation: Conversation) -> Path:
        return self.folder / f"{conversation.id}.json"

    def save(self, conversation: Conversation) -> Path:
        return write_conversation(self.path_for(conversation), conversation)

    def recent(self, limit: int = 20) -> list[Path]:
        if not self.folder.is_dir():
            return []
        files = sorted(self.folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        return files[:limit]

    def load(self, path_or_id: str | Path) -> Conversation:
        path = Path(path_or_id)
        if not path.suffix and not path.exists():
            path = self.folder / f"{path_or_id}.json"
        return read_conversation(path)
