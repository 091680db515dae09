"""Slash commands: one table, shared by the TUI and the plain REPL.

Parsing only: each front end executes commands its own way, but both list the same commands
with the same help, and both reject unknown ones with the same suggestion.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class CommandSpec:
    name: str
    args: str  # usage of the arguments, "" for none
    help: str
    needs_arg: bool = False


COMMANDS: dict[str, CommandSpec] = {
    c.name: c
    for c in (
        CommandSpec("help", "", "list commands and keys"),
        CommandSpec("clear", "", "start a new conversation (the old one stays saved)"),
        CommandSpec("retry", "", "regenerate the last reply"),
        CommandSpec("undo", "", "remove the last exchange"),
        CommandSpec("edit", "", "take back the last message to edit it"),
        CommandSpec("system", "TEXT", "set the system prompt (empty clears it)"),
        CommandSpec("set", "NAME VALUE", "change a sampling setting, e.g. /set temperature 0.7", needs_arg=True),
        CommandSpec("settings", "", "show the sampling settings"),
        CommandSpec("save", "[PATH]", "save the conversation as JSON"),
        CommandSpec("load", "PATH", "open a saved conversation", needs_arg=True),
        CommandSpec("export", "PATH.md", "write the conversation as Markdown", needs_arg=True),
        CommandSpec("model", "PATH", "load another checkpoint", needs_arg=True),
        CommandSpec("theme", "NAME", "switch the colour theme", needs_arg=True),
        CommandSpec("quit", "", "leave chatterm"),
    )
}
ALIASES = {"exit": "quit", "q": "quit", "regenerate": "retry", "new": "clear", "?": "help"}


@dataclass(frozen=True)
class Command:
    name: str
    arg: str  # everything after the name, stripped


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
    arg = arg.strip()
    if spec.needs_arg and not arg:
        raise CommandError(f"/{name} needs {spec.args}: /{name} {spec.args}")
    return Command(name, arg)


def help_lines() -> list[str]:
    return [f"/{c.name}{(' ' + c.args) if c.args else ''}: {c.help}" for c in COMMANDS.values()]
