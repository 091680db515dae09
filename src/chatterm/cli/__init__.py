"""Command line: `chatterm [MODEL]` chats; subcommands generate, convert, pull, models, prepare,
train, eval, bench.

`main` parses the command line and runs the command it names. Each command is a module with
`add_parser(subparsers)`, which registers it: chat.py (with web.py, which serves the chat to a
browser), generate.py, convert.py and models.py here, train/command.py and bench.py beside.
arguments.py holds the flags chat and generate share; errors.py how a command ends: errors a user
can cause end with one line on stderr and exit code 2, tracebacks are only for bugs, and faults
of the surroundings (closed standard streams, a reader that closes the pipe early) are not bugs
either. Text from files and models is made inert (`session/sanitize.py`) before it reaches the
terminal.
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

from .. import __version__
from . import chat, convert, generate, models
from .errors import UserError, run_command, tolerant_standard_streams

SUBCOMMANDS = ("chat", "generate", "convert", "prepare", "train", "eval", "bench", "pull", "models")
# Commands outside this package, imported when the parser is built (train also adds prepare and
# eval); one whose module cannot be imported is listed as unavailable.
PLUGGED = {"train": "chatterm.train.command", "bench": "chatterm.bench"}


def main(argv: list[str] | None = None) -> int:
    tolerant_standard_streams()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS + ("-h", "--help", "--version"):
        argv.insert(0, "chat")  # `chatterm [CHECKPOINT] [flags]` means `chatterm chat ...`
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # reported by the sub-command's own parser: its usage, not the chat's
        parser.sub_commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    return run_command(args.func, args)


TOP_USAGE = """
  chatterm [MODEL] [--plain] [-c | --resume] [options]
      chat; MODEL is a checkpoint file or folder, an installed model's name or a
      server's http(s):// address (default: the shipped model)
  chatterm COMMAND [options]
"""
TOP_EPILOG = """\
chat options (all of them: chatterm chat --help):
  --plain                a plain line REPL instead of the TUI
  -c, --continue         continue the most recent chat
  --resume               pick a saved chat to open
  --temperature N ...    sampling settings, each with its default in `chatterm chat --help`

examples:
  chatterm                                  the TUI on the shipped model
  chatterm path/to/ckpt.pt --plain          a line REPL on your checkpoint
  chatterm http://localhost:8080/v1         a model on an OpenAI-compatible server
  chatterm generate --chat --prompt hi      one reply to stdout"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatterm", usage=TOP_USAGE, description="Chat with GPT-style checkpoints in the terminal.",
        epilog=TOP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"chatterm {__version__}")
    # prog: each sub-command's usage and errors name it ("chatterm pull"), not the chat's usage.
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND", prog="chatterm")
    parser.sub_commands = sub.choices  # name -> its parser (main reports unknown arguments there)
    for command in (chat, generate, convert):
        command.add_parser(sub)
    for name, module in PLUGGED.items():
        try:
            import_module(module).add_parser(sub)
        except ImportError as e:
            stub = sub.add_parser(name, help=f"(unavailable: {e})")
            stub.set_defaults(func=lambda args, e=e: _raise(UserError(f"this command is unavailable ({e})")))
    models.add_parser(sub)  # pull, models
    return parser


def _raise(e: Exception):
    raise e
