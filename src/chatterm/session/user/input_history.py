"""What the user typed, kept across launches: `<data dir>/input_history.json`.

The TUI's message box (Up/Down) and the plain REPL (readline's Up/Down) share it. The file holds
at most `limit` entries, newest last, written atomically (`atomic.py`, private to the user) on
every `add`; each add merges with what is on disk, so two chatterms running at once both keep
their lines (the last `limit` of them). A missing, damaged or unreadable file reads as empty and is
replaced at the next add; a write that fails is skipped (the history is a convenience, never
worth interrupting a chat for). Entries longer than `MAX_ENTRY_CHARS` (huge pastes) are not kept.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ...atomic import atomic_write, remove_stray_temporaries
from ..sanitize import decode_json

HISTORY_FILE = "input_history.json"
DEFAULT_LIMIT = 500
MAX_ENTRY_CHARS = 20_000
MAX_FILE_BYTES = 32 * 1024 * 1024  # a file bigger than this is not ours: read as empty


class InputHistory:
    def __init__(self, path: str | os.PathLike, limit: int = DEFAULT_LIMIT) -> None:
        self.path = Path(path)
        self.limit = max(1, limit)
        remove_stray_temporaries(self.path)  # of a write that was killed halfway
        self.failed = ""  # the last write failure, "" while writing works

    @classmethod
    def default(cls) -> "InputHistory":
        from .folders import data_dir

        return cls(data_dir() / HISTORY_FILE)

    def load(self) -> list[str]:
        """The entries, oldest first (at most `limit`); [] when there is no readable file."""
        try:
            if not self.path.is_file() or self.path.stat().st_size > MAX_FILE_BYTES:
                return []
            data = decode_json(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            return []
        entries = data.get("entries") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            return []
        return [e for e in entries if isinstance(e, str) and e.strip()][-self.limit:]

    def add(self, text: str) -> None:
        """Append `text` (not when it repeats the newest entry) and rewrite the file."""
        if not text.strip() or len(text) > MAX_ENTRY_CHARS:
            return
        entries = self.load()
        if entries and entries[-1] == text:
            return
        entries = (entries + [text])[-self.limit:]
        body = json.dumps({"version": 1, "entries": entries}, ensure_ascii=False)
        try:
            atomic_write(self.path, lambda tmp: Path(tmp).write_text(body, encoding="utf-8"))
            self.failed = ""
        except OSError as e:
            self.failed = f"{self.path}: {e.strerror or e}"
