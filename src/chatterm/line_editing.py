"""Line editing for the plain REPL on a terminal: the standard library's readline.

Arrows move in the line and walk through the history, Ctrl+A/E/K/W/U and the rest work as in a
shell, and the history is the TUI's (`session/user/input_history.py`, one-line entries), so what was
typed in either comes back in both, across launches. `prefill(text)` puts text into the next line
for editing (`/edit`), through readline's pre-input hook. Used only when stdin and stdout are a
terminal; elsewhere (pipes, files) the REPL reads lines as before. Where Python has no readline
(Windows), `LineEditor.open` returns None and the REPL reads plain lines.
"""

from __future__ import annotations

from typing import Iterator

from .session.user.input_history import InputHistory


class LineEditor:
    def __init__(self, readline, history: InputHistory | None) -> None:
        self.readline = readline
        self.history = history
        self.pending = ""  # text for the next line to start with (see prefill)

    @classmethod
    def open(cls, history: InputHistory | None) -> "LineEditor | None":
        try:
            import readline
        except ImportError:  # pragma: no cover - not on Linux or macOS
            return None
        editor = cls(readline, history)
        readline.clear_history()
        for entry in history.load() if history else []:
            if "\n" not in entry:  # a multi-line TUI message cannot be one readline line
                readline.add_history(entry)
        readline.set_auto_history(False)  # we add lines ourselves: blank lines and repeats are skipped
        readline.set_completer(None)  # Tab inserts nothing odd (no file-name completion of chat text)
        readline.set_pre_input_hook(editor._insert_pending)
        return editor

    def lines(self, prompt: str = "> ") -> Iterator[str]:
        """Edited lines, each remembered in the history, until Ctrl+D on an empty line."""
        while True:
            try:
                line = input(prompt)
            except EOFError:
                print()  # end the prompt's line, so the shell's prompt starts on its own
                return
            self.remember(line)
            yield line

    def remember(self, line: str) -> None:
        if not line.strip():
            return
        length = self.readline.get_current_history_length()
        if length == 0 or self.readline.get_history_item(length) != line:
            self.readline.add_history(line)
        if self.history is not None:
            self.history.add(line)

    def prefill(self, text: str) -> None:
        """Start the next line with `text` (newlines become spaces: a line holds one line)."""
        self.pending = " ".join(text.splitlines())

    def _insert_pending(self) -> None:
        if self.pending:
            self.readline.insert_text(self.pending)
            self.readline.redisplay()
            self.pending = ""

    def close(self) -> None:
        self.readline.set_pre_input_hook(None)
