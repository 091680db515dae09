"""The plain front end: the same chat as the TUI, as a line REPL on stdin/stdout.

Used when stdin or stdout is not a terminal, or with `--plain`: dumb terminals, scripts, pipes.
On a terminal, lines are read with readline (line_editing.py): arrows edit, Up/Down recall the
history shared with the TUI, `/edit` puts the last message back on the line; from a pipe, lines
are read as they come (piped_lines.py: a signal always ends the wait for one).
Replies stream to stdout as plain text (model output made inert first); slash commands work as
in the TUI. Ctrl+C during a reply stops the reply; Ctrl+C at the prompt (or twice) quits.
A thinking model's reasoning is printed dimmed before the reply on a terminal (`--hide-thinking`
or `/think` hides it); through a pipe only the reply is written, as it is saved.
SIGTERM and SIGHUP quit too, after stopping the reply in flight (it is kept, marked "stopped" and
saved); so does a reader that closes stdout. Everything written is made inert (`printable`).
"""

from __future__ import annotations

import shutil
import signal
import sys
import threading
from typing import TextIO

from .engine.events import ContextTrimmed, Finished, TextDelta, ThinkingDelta
from .line_editing import LineEditor
from .model.errors import first_line
from .notices import warning_line
from .piped_lines import piped_lines
from .quit_signals import quit_on_signals
from .session import ChatSession, CommandError, is_command
from .session.commands import SlashCommands
from .session.sanitize import osc52, printable
from .session.saved_chats import chat_line
from .session.trimmed_stream import TrimmedStream
from .session.user.config import AppConfig
from .session.user.input_history import InputHistory
from .session.user.layered_settings import LayeredSettings


DIM, UNDIM = "\x1b[2m", "\x1b[22m"  # SGR faint on and off: a thinking model's reasoning


class PlainChat:
    """The REPL; it is also the `FrontEnd` its slash commands report to."""

    def __init__(self, session: ChatSession, *, settings: LayeredSettings | None = None, config: AppConfig | None = None,
                 out: TextIO | None = None, err: TextIO | None = None, load_backend=None,
                 hide_thinking: bool = False) -> None:
        self.session = session
        self.out = out or sys.stdout  # looked up now, not at import: tests and callers swap sys.stdout
        self.err = err or sys.stderr
        self.load_backend = load_backend  # callable(path) -> backend, for /model
        self.quit_requested = False
        self.interrupted = False  # Ctrl+C asked to quit (see _stop_on_ctrl_c)
        self.show_thinking = not hide_thinking  # on a terminal only (see the module doc)
        self.streaming = False
        self.terminated = 0  # the signal (SIGTERM, SIGHUP) that asked us to quit
        self.editor: LineEditor | None = None  # readline, while run_terminal runs
        self._shown = session.conversation  # the conversation whose turns are on the screen
        self.warned: set[str] = set(session.backend.warnings) if session.backend else set()  # shown when loaded
        settings = settings or LayeredSettings(session.settings)
        config = config or AppConfig()
        self.commands = SlashCommands(session, settings, config, self)
        if session.backend is not None:
            self.commands.use_backend(session.backend)

    # -- main loop -----------------------------------------------------------------------------

    @property
    def interactive(self) -> bool:
        return sys.stdin.isatty() and self.out.isatty()

    def run_terminal(self, history: InputHistory | None = None) -> int:
        """Read from a terminal with line editing (readline) and `history` (default: the data
        folder's, shared with the TUI); without readline, plain lines after a "> " prompt."""
        self.editor = LineEditor.open(InputHistory.default() if history is None else history)
        if self.editor is None:
            self.out.write("> ")
            self.out.flush()
            return self.run_piped()
        try:
            return self.run(self.editor.lines("> "), prompt=False)
        finally:
            self.editor.close()
            self.editor = None

    def run_piped(self) -> int:
        """Read stdin's lines as they come (piped_lines.py: a signal always ends the wait)."""
        return self.run(piped_lines(sys.stdin))

    def run(self, lines, *, prompt: bool | None = None) -> int:
        """Run each line (a message or a command) until they end or /quit. `prompt`: write "> "
        after each one (default: when stdin and stdout are a terminal)."""
        interactive = self.interactive if prompt is None else prompt
        on_main_thread = threading.current_thread() is threading.main_thread()  # where signals can be handled
        previous = quit_on_signals(self.session, self._end_on_signal) if on_main_thread else {}
        try:
            for raw in lines:
                line = raw.rstrip("\n")
                if not line.strip():
                    continue
                if is_command(line):
                    self.commands.run(line)
                else:
                    self.say(line[1:] if line.startswith("//") else line)
                if self.interrupted:  # a second Ctrl+C whose KeyboardInterrupt was swallowed
                    raise KeyboardInterrupt
                if self.quit_requested or self.terminated:
                    break
                if interactive:
                    self.out.write("> ")
                    self.out.flush()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 128 + self.terminated if self.terminated else 0

    def _end_on_signal(self, signum: int) -> None:
        """SIGTERM, SIGHUP (quit_signals.py): mid-reply, the reply stops within a token and is
        saved, then run() returns; waiting for input, everything is saved already."""
        self.terminated = signum
        if not self.streaming:
            raise SystemExit(128 + signum)

    def say(self, text: str) -> None:
        try:
            self.stream(self.session.send(text))
        except ValueError as e:
            self.note(str(e))

    def stream(self, events) -> None:
        """Print a reply as it streams; Ctrl+C stops it (the partial reply stays)."""
        previous = self._stop_on_ctrl_c() if threading.current_thread() is threading.main_thread() else None
        self.streaming = True
        trimmed = TrimmedStream(strip_leading=True)  # shown as it is saved: no leading space, no blank line
        thought = TrimmedStream(strip_leading=True)
        thinking = False  # the dimmed reasoning is open on the screen
        try:
            for event in events:
                if isinstance(event, ThinkingDelta) and self.show_thinking and self.out.isatty():
                    text = printable(thought.feed(event.text))
                    if text and not thinking:
                        self.out.write(DIM)
                        thinking = True
                    self.out.write(text)
                    self.out.flush()
                    continue
                if thinking and isinstance(event, (TextDelta, Finished)):
                    self.out.write(UNDIM + "\n\n")
                    thinking = False
                if isinstance(event, TextDelta):
                    self.out.write(printable(trimmed.feed(event.text)))
                    self.out.flush()
                elif isinstance(event, ContextTrimmed) and event.dropped_turns:
                    self.note(f"(dropped {event.dropped_turns} old turns to fit the context window)")
                elif isinstance(event, Finished):
                    self.out.write("\n\n" if self.editor is not None else "\n")  # a terminal: a blank line before the prompt
                    if event.stop_reason == "cancelled":
                        self.note("(stopped)")
                    elif event.error:
                        self.note(f"(error: {event.error})")
                    self.out.flush()
                    self._new_warnings()
        except BrokenPipeError:  # the reader is gone: end the reply (kept, marked "stopped"), then quit
            self.session.stop()
            for _ in events:
                pass
            raise
        finally:
            self.streaming = False
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    def _stop_on_ctrl_c(self):
        """First Ctrl+C stops the reply; a second one during the same reply quits. Returns the
        SIGINT handler it replaced. The quit is also kept in `interrupted`, which run() checks
        after the reply: Python only prints a KeyboardInterrupt that a handler raises while a
        finalizer runs, and the REPL would then wait at its prompt instead of quitting."""
        pressed = []

        def handler(signum, frame):
            if pressed:
                self.interrupted = True
                raise KeyboardInterrupt
            pressed.append(1)
            self.session.stop()

        return signal.signal(signal.SIGINT, handler)

    def _new_warnings(self) -> None:
        """A server's warnings learnt during a reply (a switch to completion mode, say); those
        from opening it were printed when it loaded."""
        backend = self.session.backend
        for warning in backend.warnings if backend else ():
            if warning not in self.warned:
                self.warned.add(warning)
                self.note(warning_line(warning))

    # -- the FrontEnd the slash commands report to ---------------------------------------------

    busy = False  # commands run between replies here
    inspect = 0  # no token inspector

    def note(self, text: str, kind: str = "info") -> None:
        self.err.write(printable(text) + "\n")  # may hold a path, a model's name, its text
        self.err.flush()

    def show_conversation(self) -> None:
        """A line REPL does not redraw history; but on a terminal a chat just opened (/load, -c)
        shows its last exchange, so the user sees where it left off (a pipe gets replies only)."""
        conversation = self.session.conversation
        if conversation is self._shown or not conversation.turns or not self.interactive:
            self._shown = conversation
            return
        self._shown = conversation
        start = next((i for i in range(len(conversation.turns) - 1, -1, -1)
                      if conversation.turns[i].role == "user"), 0)
        for turn in conversation.turns[start:]:
            self.out.write(("> " if turn.role == "user" else "") + printable(turn.text) + "\n")
        self.out.write("\n" if self.editor is not None else "")
        self.out.flush()

    def show_settings(self) -> None:
        pass

    def stream_reply(self, events) -> None:
        self.stream(events)

    stream_more = stream_reply  # a continuation prints on a line of its own

    def copy_text(self, text: str) -> None:
        """OSC 52, as the TUI does: the terminal (even over SSH) puts it on the clipboard."""
        if not self.out.isatty():
            raise CommandError("/copy needs a terminal (it asks the terminal to copy, with OSC 52)")
        self.out.write(osc52(text))
        self.out.flush()

    def run_editor(self, text: str) -> str:
        from .session.external_editor import compose_in_editor

        return compose_in_editor(text)  # the editor gets the terminal: the REPL waits for input anyway

    def edit_text(self, text: str) -> None:
        if self.editor is not None:  # the next line starts with it, to edit and send with Enter
            self.editor.prefill(text)
        else:
            self.note(f"took back: {text}")

    def show_chats(self, chats: list, query: str = "") -> None:
        if not chats:
            self.note(f"no saved chat holds {query!r}" if query else "no saved chats yet")
            return
        width = shutil.get_terminal_size().columns
        lines = [chat_line(i + 1, chat, width) for i, chat in enumerate(chats)]
        self.note("\n".join(lines + ["/load N opens one · /chats rename N TITLE · /chats delete N"]))

    def load_model(self, spec: str) -> None:
        if self.load_backend is None:
            raise CommandError("/model is not available here")
        try:
            backend = self.load_backend(spec)
        except Exception as e:  # a bad path or file: the session and the model we have stay
            keeping = f"; still using {self.session.backend.info.name}" if self.session.backend else ""
            raise CommandError(f"{first_line(e)}{keeping}") from e
        self.commands.use_backend(backend)
        self.warned.update(backend.warnings)  # load_backend printed them
        self.note(f"loaded {self.session.backend.info.name}")

    def toggle_thinking(self) -> None:
        self.show_thinking = not self.show_thinking
        self.note("thinking is shown (dimmed)" if self.show_thinking else "thinking is hidden")

    def set_theme(self, name: str) -> None:
        raise CommandError("themes apply to the TUI only")

    def key_help(self) -> list[str]:
        editing = ["arrows edit the line; Up/Down: earlier lines (kept across launches)"] if self.editor else []
        return editing + ["Ctrl+C stops a reply; Ctrl+D (or /quit) leaves"]

    def quit(self) -> None:
        self.quit_requested = True
