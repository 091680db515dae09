"""`chatterm chat [MODEL]` (also plain `chatterm [MODEL]`): the TUI on a terminal, the plain line
REPL with --plain or when stdin or stdout is not a terminal, or the TUI served to a browser with
--web (web.py). SIGTERM and SIGHUP end a chat as its quit command would (quit_signals.py)."""

from __future__ import annotations

import argparse
import signal
import sys

from .. import notices
from ..quit_signals import quit_on_signals
from .arguments import add_model_args, add_sampling_args, backend_options, checked_device_args, layered_settings, load_backend
from .errors import UserError
from .web import add_arguments as add_web_arguments, in_browser_session


def add_parser(sub) -> None:
    chat = sub.add_parser("chat", help="chat in the TUI (default) or a plain REPL; `chatterm [MODEL]` means this",
                          description="Chat with a model in the TUI, or in a plain line REPL with --plain.")
    add_model_args(chat)
    add_sampling_args(chat)
    chat.add_argument("--plain", action="store_true",
                      help="a plain line REPL instead of the TUI (used anyway when stdin or stdout is not a terminal)")
    chat.add_argument("--save", action="store_true",
                      help="save the chat when stdin is not a terminal (a piped --plain run is not saved "
                      "otherwise, so scripts do not fill /chats, unless it continues a saved chat with -c or "
                      "--resume); a terminal's chats are always saved")
    chat.add_argument("--hide-thinking", action="store_true",
                      help="the plain REPL does not print a thinking model's reasoning (by default it is "
                      "printed dimmed on a terminal; through a pipe only the reply is written)")
    resume = chat.add_mutually_exclusive_group()
    resume.add_argument("-c", "--continue", dest="continue_last", action="store_true",
                        help="continue the most recent saved chat")
    resume.add_argument("--resume", action="store_true",
                        help="pick a saved chat to open (the TUI's chats list; the REPL prints a numbered list)")
    chat.add_argument("--system", metavar="TEXT", help="system prompt (default: the config's, else none)")
    chat.add_argument("--theme", metavar="NAME", help="colour theme (default: the config's, else chatterm-dark)")
    chat.add_argument("--config", metavar="PATH", help="config file (default: the user config dir's config.toml)")
    add_web_arguments(chat)  # --web, --port
    chat.set_defaults(func=cmd_chat)


def cmd_chat(args: argparse.Namespace) -> int:
    from ..session.user.config import load_config
    from ..session.user.folders import default_checkpoint

    checked_device_args(args)
    config, problems = load_config(args.config)
    for name in ("device", "dtype", "theme"):
        if getattr(args, name):
            setattr(config, name, getattr(args, name))
    if args.system is not None:
        config.system_prompt = args.system
    settings = layered_settings(args, config.sampling)
    checkpoint = args.checkpoint or config.model or str(default_checkpoint())
    if args.web:
        return _serve_web(args, checkpoint, config, problems)
    if args.plain or not (sys.stdin.isatty() and sys.stdout.isatty() or in_browser_session()):
        return _plain_chat(config, settings, checkpoint, problems, args)
    from ..ui.app import ChatApp

    app = ChatApp(config, checkpoint, problems, settings=settings, resume=_resume(args),
                  backend_options=backend_options(args, checkpoint, config.device, config.dtype, config.api_key_env))
    quit_on_signals(app.session, lambda signum: _exit_app(app, signum))
    if in_browser_session():  # the server ends its sessions by a quit message (as Ctrl+Q); the Ctrl+C
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # typed at the server's terminal is not for them
    app.run()
    app.session.stop()  # the web driver's quit skips Ctrl+Q's stop: end a reply in flight before exit joins it
    return app.return_code or 0


def _exit_app(app, signum: int) -> None:
    """End the TUI as Ctrl+Q does, from a signal handler: through the app's own loop, so that
    Textual restores the terminal (alternate screen and mouse tracking off)."""
    import asyncio

    try:
        loop = asyncio.get_running_loop()  # the handler runs on the main thread, inside the app's loop
    except RuntimeError:
        raise SystemExit(128 + signum) from None
    loop.call_soon_threadsafe(lambda: app.exit(return_code=128 + signum))


def _resume(args) -> str:
    """How to start: "last" (-c, --continue), "pick" (--resume) or "" (a new chat)."""
    return "last" if args.continue_last else "pick" if args.resume else ""


def _serve_web(args, checkpoint, config, problems) -> int:
    """Check the flags once here (each browser tab's session reads them again), then serve."""
    from ..session.backends.factory import REMOTE_SCHEMES
    from ..session.user.installed_models import resolve_model
    from .web import serve_chat

    for problem in problems:
        notices.warn(problem)
    backend_options(args, checkpoint, config.device, config.dtype)
    if not str(checkpoint).startswith(REMOTE_SCHEMES) and not resolve_model(checkpoint).exists():
        raise UserError(f"{checkpoint}: no such file or folder, nor an installed model")
    return serve_chat(args)


def _plain_chat(config, settings, checkpoint, problems, args) -> int:
    from ..repl import PlainChat
    from ..session import ChatSession, Conversation, ConversationStore
    from ..session.user.folders import data_dir
    from ..session.sanitize import printable

    for problem in problems:
        notices.warn(problem)

    options = backend_options(args, checkpoint, config.device, config.dtype, config.api_key_env)

    def load(path):
        return load_backend(path, options)

    session = ChatSession(
        load(checkpoint),
        settings.live,
        Conversation(system=config.system_prompt),
        ConversationStore(data_dir() / "conversations"),
        warn=notices.warn,
        autosave=sys.stdin.isatty() or args.save or bool(_resume(args)),  # -c: it goes on in its file
    )
    chat = PlainChat(session, settings=settings, config=config, load_backend=load, hide_thinking=args.hide_thinking)
    if sys.stdin.isatty() and sys.stdout.isatty():
        info = session.backend.info
        print(f"chatterm: {printable(info.name)} on {info.device} ({info.dtype}); /help for commands, Ctrl+D to quit",
              file=sys.stderr)
    try:
        if _resume(args):
            chat.commands.resume(_resume(args))
        return chat.run_terminal() if chat.interactive else chat.run_piped()
    finally:
        session.close()  # a server's connections, a model's memory: the chat is over
