"""Slash commands: one table, executed once, here, for every front end.

`SlashCommands.run("/set temperature 0.7")` parses a line, runs the command against the chat
session, the layered settings and the config, and reports through a `FrontEnd`: the small
interface that the TUI (`ui/app.py`) and the plain REPL (`repl.py`) implement to render results.
Front ends never run commands themselves; key bindings that mirror a command (retry, undo, ...)
call the same methods. Errors a user can cause are one line, reported with kind "error".
"""

from __future__ import annotations

import difflib
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Protocol

from ..model.errors import first_line
from .attachments import read_files
from .chat import ChatSession
from .chats.persistence import write_conversation, write_user_file
from .prompts.prompt_fit import prompt_budget
from .prompts.token_estimate import estimate_tokens
from .sanitize import printable
from .saved_chats import SavedChats, summary_title
from .user.config import AppConfig, update_config
from .user.layered_settings import MODEL, SESSION, LayeredSettings, model_recommendation


@dataclass(frozen=True)
class CommandSpec:
    name: str
    args: str  # usage of the arguments, "" for none
    help: str
    needs_arg: bool = False
    flags: tuple[str, ...] = ()  # trailing options, e.g. "--save"


COMMANDS: dict[str, CommandSpec] = {
    c.name: c
    for c in (
        CommandSpec("help", "", "list commands and keys"),
        CommandSpec("clear", "", "start a new conversation (the old one stays saved)"),
        CommandSpec("retry", "", "regenerate the last reply (the old one stays as an alternative)"),
        CommandSpec("continue", "", "generate more of the last reply, in the same message"),
        CommandSpec("undo", "", "remove the last exchange (/redo puts it back)"),
        CommandSpec("redo", "", "put back what /undo took away (until the next message)"),
        CommandSpec("edit", "[N]", "edit message N (default: your last one); sending replaces it, "
                    "the old version stays as an alternative"),
        CommandSpec("alt", "[N] [prev|next]", "show another version of message N (default: the last one that has some)"),
        CommandSpec("copy", "[N]", "copy message N (default: the last reply) to the clipboard"),
        CommandSpec("editor", "", "write the message in $VISUAL / $EDITOR"),
        CommandSpec("system", "TEXT [--save]", "set this session's system prompt (empty clears it); --save keeps it",
                    flags=("--save",)),
        CommandSpec("set", "NAME VALUE [--save]", "change a sampling setting for this session; --save makes it your default",
                    needs_arg=True, flags=("--save",)),
        CommandSpec("settings", "", "show the sampling settings and where each comes from"),
        CommandSpec("think", "[on|off|auto] [--save]", "a thinking model: on/off sets whether it reasons first "
                    "(the template's enable_thinking); alone, shows or hides its reasoning", flags=("--save",)),
        CommandSpec("read", "PATH... | clear", "attach text files (globs too: src/*.py) to your next message; "
                    "alone, list them; clear drops them"),
        CommandSpec("save", "[PATH] [--force]", "save the conversation as JSON", flags=("--force",)),
        CommandSpec("load", "N|ID|PATH", "open a saved chat: its number in /chats, its id, or a file", needs_arg=True),
        CommandSpec("chats", "[TEXT | rename N TITLE | delete N]", "list recent chats to resume one (/load N); "
                    "with TEXT, those whose messages hold it; rename or delete one"),
        CommandSpec("export", "PATH.md [--force]", "write the conversation as Markdown", needs_arg=True,
                    flags=("--force",)),
        CommandSpec("model", "PATH", "load another checkpoint", needs_arg=True),
        CommandSpec("theme", "NAME", "switch the colour theme", needs_arg=True),
        CommandSpec("quit", "", "leave chatterm"),
    )
}
# Other chat tools' names for the same commands (Ollama's /bye, llama-cli's and aichat's /exit, ...).
ALIASES = {"exit": "quit", "q": "quit", "bye": "quit", "regenerate": "retry", "new": "clear", "reset": "clear",
           "?": "help", "cont": "continue", "file": "read", "history": "chats"}


@dataclass(frozen=True)
class Command:
    name: str
    arg: str  # everything after the name, without the flags, stripped
    flags: frozenset[str] = frozenset()


class CommandError(ValueError):
    """A slash command that cannot run; the message is one line for the user."""


def is_command(text: str) -> bool:
    """Lines starting with one '/' are commands; '//' escapes a literal slash."""
    return text.startswith("/") and not text.startswith("//")


def parse_command(text: str) -> Command:
    body = text.strip()[1:]
    name, _, arg = body.partition(" ")
    name = ALIASES.get(name.lower(), name.lower())
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, list(COMMANDS), n=1, cutoff=0.6)
        hint = f"; did you mean /{close[0]}?" if close else "; /help lists them"
        raise CommandError(f"unknown command /{name}{hint}")
    spec = COMMANDS[name]
    words, flags = arg.split(" "), set()
    while words and words[-1] in spec.flags:  # flags trail the argument: "/set top_k 5 --save"
        flags.add(words.pop())
    arg = " ".join(words).strip()
    if spec.needs_arg and not arg:
        raise CommandError(f"/{name} needs {spec.args.split(' [')[0]}: /{name} {spec.args}")
    return Command(name, arg, frozenset(flags))


def shlex_split(arg: str) -> list[str]:
    """Paths as a shell splits them (quotes keep spaces); unbalanced quotes: split on spaces."""
    try:
        return shlex.split(arg)
    except ValueError:
        return arg.split()


def help_lines() -> list[str]:
    aliases: dict[str, list[str]] = {}
    for alias, name in ALIASES.items():
        aliases.setdefault(name, []).append(f"/{alias}")
    return [f"/{c.name}{(' ' + c.args) if c.args else ''}: {c.help}" for c in COMMANDS.values()] + [
        "also: " + "; ".join(f"{' '.join(names)} = /{name}" for name, names in aliases.items())]


class FrontEnd(Protocol):
    """What a front end offers the commands: rendering, plus the few things only it can do."""

    @property
    def busy(self) -> bool: ...  # a reply is streaming

    inspect: int  # candidates per token the front end shows (0: none)

    def note(self, text: str, kind: str = "info") -> None: ...  # kind: info, error, system
    def show_conversation(self) -> None: ...  # redraw after the conversation changed
    def show_settings(self) -> None: ...  # the settings or the system prompt changed
    def stream_reply(self, events: Iterable) -> None: ...  # render a reply (a retry)
    def stream_more(self, events: Iterable) -> None: ...  # render more of the last reply (/continue)
    def edit_text(self, text: str) -> None: ...  # offer a taken-back message for editing
    def show_chats(self, chats: list, query: str = "") -> None: ...  # chats (ChatSummary) to open one of
    def copy_text(self, text: str) -> None: ...  # to the clipboard; CommandError where it cannot
    def run_editor(self, text: str) -> str: ...  # run the user's editor on `text` (ValueError: one line)
    def load_model(self, spec: str) -> None: ...  # open a backend; report success or failure itself
    def set_theme(self, name: str) -> None: ...  # ValueError for an unknown theme
    def toggle_thinking(self) -> None: ...  # show or hide a thinking model's reasoning
    def key_help(self) -> list[str]: ...  # lines for /help about keys
    def quit(self) -> None: ...


class SlashCommands:
    def __init__(self, session: ChatSession, settings: LayeredSettings, config: AppConfig, front: FrontEnd) -> None:
        self.session = session
        self.settings = settings
        self.config = config
        self.front = front
        self.saved_chats = SavedChats(session)

    def use_backend(self, backend) -> None:
        """Chat with `backend` from now on (the session closes the one it replaces); its
        recommended sampling settings become the model layer (replacing the previous model's),
        below the user's config, flags and session."""
        self.session.use_backend(backend)
        recommended, problems = model_recommendation(backend)
        self.settings.set_layer(MODEL, recommended)
        for problem in problems:
            self.front.note(problem, "error")
        self.front.show_settings()

    def run(self, line: str) -> None:
        """Run one command line; every user error becomes one "error" note."""
        try:
            command = parse_command(line)
            getattr(self, f"do_{command.name}")(command.arg, command.flags)
        except (ValueError, OSError) as e:
            self.front.note(first_line(e), "error")

    def set_system(self, text: str) -> None:
        """The settings panel's system prompt field: the text as typed is this session's system
        prompt (a trailing "--save" in it is text, not a flag: the panel saves with Ctrl+S)."""
        try:
            self.do_system(text.strip())
        except (ValueError, OSError) as e:
            self.front.note(first_line(e), "error")

    def _idle(self) -> None:
        if self.front.busy:
            raise CommandError("a reply is still streaming; Esc stops it")

    def persist(self, change: Callable[[AppConfig], object]) -> bool:
        """Apply `change` to this session's config and save just that change to the file (see
        `update_config`: values given for this launch only, such as --system, stay out of it).
        A failure is a warning; the session goes on with its values."""
        change(self.config)
        try:
            update_config(self.config.path, change)
            return True
        except (OSError, ValueError) as e:
            self.front.note(f"could not save settings to {self.config.path}: {first_line(e)}", "error")
            return False

    # -- the commands (arg, flags) -------------------------------------------------------------

    def do_help(self, arg: str = "", flags=frozenset()) -> None:
        keys = self.front.key_help()
        self.front.note("\n".join(help_lines() + (["", "Keys:", *keys] if keys else [])))

    def do_clear(self, arg: str = "", flags=frozenset()) -> None:
        self._idle()
        self.session.clear()
        self.front.show_conversation()
        self.front.note("new conversation (the last one is saved)")

    def do_retry(self, arg: str = "", flags=frozenset()) -> None:
        self._idle()
        if self.session.backend is None:
            raise CommandError("no model loaded yet; wait for it, or /model PATH")
        self.front.stream_reply(self.session.regenerate(inspect=self.front.inspect))

    def do_continue(self, arg: str = "", flags=frozenset()) -> None:
        self._idle()
        self.front.stream_more(self.session.continue_reply(inspect=self.front.inspect))

    def do_undo(self, arg: str = "", flags=frozenset()) -> None:
        self._idle()
        removed = self.session.undo()
        if not removed:
            self.front.note("nothing to undo")
            return
        self.front.show_conversation()
        replies = sum(t.role == "assistant" for t in removed)
        what = f"your message “{summary_title(removed[0].text, 30)}”" + (" and its reply" if replies else "")
        self.front.note(f"undid {what}; /redo puts it back")

    def do_redo(self, arg: str = "", flags=frozenset()) -> None:
        self._idle()
        restored = self.session.redo()
        if not restored:
            self.front.note("nothing to redo")
            return
        self.front.show_conversation()
        self.front.note(f"put back your message “{summary_title(restored[0].text, 30)}”")

    def do_edit(self, arg: str = "", flags=frozenset()) -> None:
        self._idle()
        index = self._message_index(arg) if arg else self.session.last_user_index()
        if index is None:
            self.front.note("nothing to edit")
            return
        text = self.session.start_edit(index)
        self.front.edit_text(text)

    def do_alt(self, arg: str = "", flags=frozenset()) -> None:
        self._idle()
        words = arg.lower().split()
        step = -1 if "prev" in words else 1
        numbers = [w for w in words if w not in ("prev", "next")]
        forked = self.session.conversation.forked_indices()
        index = self._message_index(numbers[0]) if numbers else (forked[-1] if forked else None)
        if index is None or not self.session.switch_alternative(index, step):
            raise CommandError("no alternatives here: /retry or /edit make them")
        turn = self.session.conversation.turns[index]
        self.front.show_conversation()
        preview = " ".join(printable(turn.text).split())  # the plain REPL does not redraw: say which
        preview = preview[:60] + "…" if len(preview) > 60 else preview
        self.front.note(f"message {index + 1}: version {turn.fork.shown + 1}/{len(turn.fork.options)}: {preview}")

    def do_copy(self, arg: str = "", flags=frozenset()) -> None:
        turns = self.session.conversation.turns
        index = self._message_index(arg) if arg else next(
            (i for i in range(len(turns) - 1, -1, -1) if turns[i].role == "assistant"), None)
        if index is None:
            raise CommandError("nothing to copy yet")
        text = printable(turns[index].text)  # pasted into a shell, an escape sequence could act
        self.front.copy_text(text)
        self.front.note(f"copied message {index + 1} ({len(text):,} characters)")

    def do_editor(self, arg: str = "", flags=frozenset()) -> None:
        self.front.edit_text(self.front.run_editor(arg))

    def _message_index(self, arg: str) -> int:
        """A message number as the user gives it (1 = the first shown) -> its index."""
        count = len(self.session.conversation.turns)
        if not arg.strip().isdigit() or not 1 <= int(arg) <= count:
            raise CommandError(f"{arg.strip()!r}: give a message number from 1 to {count}" if count
                               else "no messages yet")
        return int(arg) - 1

    def do_system(self, arg: str = "", flags=frozenset()) -> None:
        self.session.set_system(arg)
        text = self.session.conversation.system
        saved = "--save" in flags
        if saved:
            saved = self.persist(lambda config: setattr(config, "system_prompt", text))
        self.front.show_settings()
        what = f"system prompt: {text}" if text else "system prompt cleared"
        self.front.note(what + (" (saved as default)" if saved else " (this session)"), "system")

    def do_set(self, arg: str, flags=frozenset()) -> None:
        name, _, value = arg.partition(" ")
        if not value.strip():
            raise CommandError(f"/set {name} needs a value: /set {COMMANDS['set'].args}")
        if "--save" in flags:
            name = self.settings.save_default(name, value.strip())
            saved = self.persist(lambda config: config.sampling.update({name: self.settings.layers["config"][name]}))
        else:
            name = self.settings.set(name, value.strip(), SESSION)
            saved = False
        self.front.show_settings()
        self.front.note(f"{name} = {self.settings.describe(name)}" + (" · saved as default" if saved else ""))

    def do_think(self, arg: str = "", flags=frozenset()) -> None:
        if not arg:
            self.front.toggle_thinking()
            return
        self.do_set(f"thinking {arg}", flags)

    def do_read(self, arg: str = "", flags=frozenset()) -> None:
        session = self.session
        if arg == "clear":
            dropped, session.attachments = len(session.attachments), []
            self.front.note(f"dropped {dropped} attached files" if dropped else "no files are attached")
            return
        if not arg:
            files = session.attachments
            listing = [f"{a.name} ({a.size:,} bytes)" for a in files]
            self.front.note("attached to your next message: " + ", ".join(listing) if files else
                            "no files are attached; /read PATH... attaches some")
            return
        found, problems = read_files(shlex_split(arg))
        for problem in problems:
            self.front.note(problem, "error")
        backend = session.backend
        count = backend.count_tokens if backend is not None else estimate_tokens
        for attachment in found:
            tokens = count(attachment.text)
            self.front.note(f"attached {attachment.name} ({attachment.size:,} bytes, {tokens:,} tokens)")
        session.attachments = session.attachments + found
        if found and backend is not None:
            self._warn_if_too_big(backend, sum(count(a.text) for a in session.attachments))

    def _warn_if_too_big(self, backend, tokens: int) -> None:
        """Files that will not fit the context: say so, and what sending them anyway does."""
        window = backend.info.context_window
        used = self.session.context_tokens()
        room = prompt_budget(window, self.session.settings.max_new_tokens) - used
        if tokens > room:
            self.front.note(f"the attached files are {tokens:,} tokens, more than the {max(room, 0):,} left in the "
                            f"{window:,}-token context window: send to go on anyway (older turns are dropped and "
                            "the message keeps its end), or /read clear to drop them", "error")

    def do_settings(self, arg: str = "", flags=frozenset()) -> None:
        names = self.session.settings.to_dict()
        self.front.note("\n".join(f"{name} = {self.settings.describe(name)}" for name in names))

    def save_defaults(self) -> None:
        """The panel's "save as defaults": this session's settings and system prompt go to the config."""
        moved = self.settings.session_to_config()
        system = self.session.conversation.system

        def change(config: AppConfig) -> None:
            config.sampling.update(moved)
            config.system_prompt = system

        if self.persist(change):
            names = ", ".join(moved) or "no sampling settings changed"
            self.front.note(f"saved as defaults: {names}; system prompt {'kept' if system else 'empty'}")
        self.front.show_settings()

    def do_save(self, arg: str = "", flags=frozenset()) -> None:
        if arg:
            path = write_conversation(Path(arg), self.session.conversation, force="--force" in flags)
        elif self.session.store is not None:
            self.session.autosave = True  # asked once (a piped REPL): the rest of the chat is saved too
            path = self.session.store.save(self.session.conversation)
        else:
            raise CommandError("/save needs a PATH (autosave is off)")
        self.front.note(f"saved to {path}")

    def do_load(self, arg: str, flags=frozenset()) -> None:
        self._idle()
        said = self.saved_chats.open(arg)
        self.front.show_conversation()
        self.front.note(said)

    def resume(self, how: str) -> None:
        """At start: "last" continues the most recent chat (`-c`), "pick" lists them (`--resume`)."""
        try:
            if how == "last":
                said = self.saved_chats.open_latest()
                self.front.show_conversation()
                self.front.note(said)
            elif how == "pick":
                self.do_chats()
        except (ValueError, OSError) as e:
            self.front.note(f"{e}; starting a new chat", "error")

    def do_chats(self, arg: str = "", flags=frozenset()) -> None:
        action, _, rest = arg.partition(" ")
        if not action:
            self.front.show_chats(self.saved_chats.recent())
        elif action not in ("rename", "delete"):  # words to find in the chats' messages
            self.front.show_chats(self.saved_chats.recent(query=arg), query=arg)
        elif action == "rename" and rest.strip():
            ref, _, title = rest.strip().partition(" ")
            self.front.note(self.saved_chats.rename(ref, title))
            self.front.show_settings()  # the open chat's title may have changed
        elif action == "delete" and rest.strip():
            self.front.note(self.saved_chats.delete(rest.strip()))
        else:
            raise CommandError(f"/chats {COMMANDS['chats'].args}")

    def do_export(self, arg: str, flags=frozenset()) -> None:
        path = write_user_file(arg, self.session.conversation.to_markdown(), force="--force" in flags)
        self.front.note(f"exported to {path}")

    def do_model(self, arg: str, flags=frozenset()) -> None:
        self._idle()
        self.front.load_model(arg)

    def do_theme(self, arg: str, flags=frozenset()) -> None:
        self.front.set_theme(arg)
        self.persist(lambda config: setattr(config, "theme", arg))
        self.front.note(f"theme: {arg}")

    def do_quit(self, arg: str = "", flags=frozenset()) -> None:
        self.front.quit()
