"""The plain front end: the same chat as the TUI, as a line REPL on stdin/stdout.

Used when stdin or stdout is not a terminal, or with `--plain`: dumb terminals, scripts, pipes.
Replies stream to stdout as plain text (model output made inert first); slash commands work as
in the TUI. Ctrl+C during a reply stops the reply; Ctrl+C at the prompt (or twice) quits.
SIGTERM and SIGHUP quit too, after stopping the reply in flight (it is kept, marked "stopped" and
saved); so does a reader that closes stdout. Everything written is made inert (`printable`).
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import TextIO

from .engine.events import ContextTrimmed, Finished, TextDelta
from .session import (
    COMMANDS,
    ChatSession,
    CommandError,
    is_command,
    parse_command,
    read_conversation,
    write_conversation,
)
from .session.commands import help_lines
from .session.persistence import path_and_force, write_user_file
from .session.sanitize import printable


class PlainChat:
    def __init__(self, session: ChatSession, *, out: TextIO = sys.stdout, err: TextIO = sys.stderr, load_backend=None) -> None:
        self.session = session
        self.out = out
        self.err = err
        self.load_backend = load_backend  # callable(path) -> backend, for /model
        self.quit = False
        self.streaming = False
        self.terminated = 0  # the signal (SIGTERM, SIGHUP) that asked us to quit

    # -- main loop -----------------------------------------------------------------------------

    def run(self, lines) -> int:
        interactive = sys.stdin.isatty() and self.out.isatty()
        previous = self._quit_on_terminate() if threading.current_thread() is threading.main_thread() else {}
        try:
            for raw in lines:
                line = raw.rstrip("\n")
                if not line.strip():
                    continue
                if is_command(line):
                    self.command(line)
                else:
                    self.say(line[1:] if line.startswith("//") else line)
                if self.quit or self.terminated:
                    break
                if interactive:
                    self.out.write("> ")
                    self.out.flush()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 128 + self.terminated if self.terminated else 0

    def _quit_on_terminate(self) -> dict:
        def handler(signum, frame):
            self.terminated = signum
            if self.streaming:
                self.session.stop()  # the reply ends within a token, is saved, then run() returns
            else:
                raise SystemExit(128 + signum)  # waiting for input: everything is saved already

        return {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}

    def say(self, text: str) -> None:
        try:
            self.stream(self.session.send(text))
        except ValueError as e:
            self.note(str(e))

    def stream(self, events) -> None:
        """Print a reply as it streams; Ctrl+C stops it (the partial reply stays)."""
        previous = _install_stop_handler(self.session) if threading.current_thread() is threading.main_thread() else None
        self.streaming = True
        try:
            for event in events:
                if isinstance(event, TextDelta):
                    self.out.write(printable(event.text))
                    self.out.flush()
                elif isinstance(event, ContextTrimmed) and event.dropped_turns:
                    self.note(f"(dropped {event.dropped_turns} old turns to fit the context window)")
                elif isinstance(event, Finished):
                    self.out.write("\n")
                    if event.stop_reason == "cancelled":
                        self.note("(stopped)")
                    elif event.error:
                        self.note(f"(error: {event.error})")
                    self.out.flush()
        except BrokenPipeError:  # the reader is gone: end the reply (kept, marked "stopped"), then quit
            self.session.stop()
            for _ in events:
                pass
            raise
        finally:
            self.streaming = False
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    def note(self, text: str) -> None:
        self.err.write(printable(text) + "\n")  # may hold a path, a model's name, its text
        self.err.flush()

    # -- slash commands ------------------------------------------------------------------------

    def command(self, line: str) -> None:
        try:
            cmd = parse_command(line)
            getattr(self, f"cmd_{cmd.name}")(cmd.arg)
        except (CommandError, ValueError, OSError) as e:
            self.note(str(e).splitlines()[0] if str(e) else type(e).__name__)

    def cmd_help(self, arg: str) -> None:
        self.note("\n".join(help_lines()))

    def cmd_clear(self, arg: str) -> None:
        self.session.clear()
        self.note("(new conversation)")

    def cmd_retry(self, arg: str) -> None:
        self.stream(self.session.regenerate())

    def cmd_undo(self, arg: str) -> None:
        self.note("(removed the last exchange)" if self.session.undo() else "(nothing to undo)")

    def cmd_edit(self, arg: str) -> None:
        text = self.session.edit_last()
        self.note(f"(took back: {text})" if text else "(nothing to edit)")

    def cmd_system(self, arg: str) -> None:
        self.session.set_system(arg)
        self.note("(system prompt set)" if arg else "(system prompt cleared)")

    def cmd_set(self, arg: str) -> None:
        name, _, value = arg.partition(" ")
        if not value.strip():
            raise CommandError(f"/set {name} needs a value: {COMMANDS['set'].args}")
        self.session.settings.set(name, value.strip())
        self.note(f"({name.strip().lower().replace('-', '_')} = {self.session.settings.describe(name.strip().lower().replace('-', '_'))})")

    def cmd_settings(self, arg: str) -> None:
        s = self.session.settings
        self.note("\n".join(f"{name} = {s.describe(name)}" for name in s.to_dict()))

    def cmd_save(self, arg: str) -> None:
        target, force = path_and_force(arg)
        if target:
            path = write_conversation(target, self.session.conversation, force=force)
        elif self.session.store is not None:
            path = self.session.store.save(self.session.conversation)
        else:
            raise CommandError("/save needs a PATH (autosave is off)")
        self.note(f"(saved to {path})")

    def cmd_load(self, arg: str) -> None:
        self.session.load_conversation(read_conversation(Path(arg)))
        self.note(f"(loaded {len(self.session.conversation.turns)} turns)")

    def cmd_export(self, arg: str) -> None:
        target, force = path_and_force(arg)
        path = write_user_file(target, self.session.conversation.to_markdown(), force=force)
        self.note(f"(exported to {path})")

    def cmd_model(self, arg: str) -> None:
        if self.load_backend is None:
            raise CommandError("/model is not available here")
        try:
            backend = self.load_backend(arg)
        except Exception as e:  # a bad path or file: the session and the model we have stay
            keeping = f"; still using {self.session.backend.info.name}" if self.session.backend else ""
            raise CommandError(f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}{keeping}") from e
        self.session.backend = backend
        self.note(f"(loaded {backend.info.name})")

    def cmd_theme(self, arg: str) -> None:
        self.note("(themes apply to the TUI only)")

    def cmd_quit(self, arg: str) -> None:
        self.quit = True


def _install_stop_handler(session: ChatSession):
    """First Ctrl+C stops the reply; a second one during the same reply quits."""
    pressed = []

    def handler(signum, frame):
        if pressed:
            raise KeyboardInterrupt
        pressed.append(1)
        session.stop()

    return signal.signal(signal.SIGINT, handler)
