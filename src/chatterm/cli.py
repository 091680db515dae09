"""Command line: `chatterm [CHECKPOINT]` chats; subcommands generate, convert, prepare, train,
eval, bench.

Errors a user can cause (a bad path, a broken checkpoint, an absurd setting) end with one line on
stderr and exit code 2; tracebacks are only for bugs. Faults of the surroundings are not bugs
either: a closed stdin/stdout/stderr reads as empty / writes nowhere, invalid UTF-8 on stdin is
replaced, a reader that closes the pipe early (`| head -c 1`) ends the program quietly (exit code
141, as if by SIGPIPE), and SIGTERM/SIGHUP end a chat as its quit command would (the reply in
flight is kept, marked "stopped", and saved; the TUI restores the terminal). Text from files and
models is made inert (`session/sanitize.py`) before it reaches the terminal.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from importlib import import_module
from pathlib import Path

from . import __version__

SUBCOMMANDS = ("chat", "generate", "convert", "prepare", "train", "eval", "bench", "pull", "models")
# Modules that register their own subcommand with `add_parser(subparsers)`.
PLUGGED = {"train": "chatterm.train.command", "bench": "chatterm.bench", "pull": "chatterm.models_command"}  # train also adds prepare, eval; pull adds models


class UserError(Exception):
    """Ends the program with a one-line message and exit code 2."""


def main(argv: list[str] | None = None) -> int:
    _tolerant_standard_streams()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS + ("-h", "--help", "--version"):
        argv.insert(0, "chat")  # `chatterm [CHECKPOINT] [flags]` means `chatterm chat ...`
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # reported by the sub-command's own parser: its usage, not the chat's
        parser.sub_commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        return _error(e)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _pipe_closed()
    except Exception as e:  # user-caused errors from the lower layers carry one-line messages
        from .model.errors import CheckpointError

        if isinstance(e, (CheckpointError, FileNotFoundError)):
            return _error(e)
        raise


def _error(e: BaseException) -> int:
    from .model.errors import first_line
    from .session.sanitize import printable

    print(f"chatterm: error: {printable(first_line(e))}", file=sys.stderr)
    return 2


def _tolerant_standard_streams() -> None:
    """A closed fd 0-2 gets /dev/null (else the next file we open would take its number, and a
    stray write would land in a conversation); undecodable input is replaced, not fatal."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # takes the lowest free number: this one
        stream = getattr(sys, name)  # None when the fd was closed at startup; else leave it be
        if stream is None:
            setattr(sys, name, open(os.devnull, mode, encoding="utf-8"))
        elif hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")


def _pipe_closed() -> int:
    """The reader went away: say nothing more (even the final flush must not complain)."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 128 + signal.SIGPIPE


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

    chat = sub.add_parser("chat", help="chat in the TUI (default) or a plain REPL; `chatterm [MODEL]` means this",
                          description="Chat with a model in the TUI, or in a plain line REPL with --plain.")
    _add_model_args(chat)
    _add_sampling_args(chat)
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
    import_module("chatterm.web").add_arguments(chat)  # --web, --port
    chat.set_defaults(func=cmd_chat)

    gen = sub.add_parser(
        "generate", help="stream a completion of a prompt to stdout",
        description="Stream the model's text to stdout, then exactly one newline (the same on a terminal and "
        "a pipe). A completion is printed as generated, so prompt + output is the text (its leading space "
        "kept); a --chat reply is trimmed, as it is saved. Trailing whitespace is dropped in both.")
    _add_model_args(gen)
    _add_sampling_args(gen)
    gen.add_argument("--prompt", required=True, help="prompt text, or - to read stdin")
    gen.add_argument("--chat", action="store_true", help="treat the prompt as one user message of a chat")
    gen.add_argument("--stats", action="store_true", help="print speed figures to stderr at the end")
    gen.add_argument("--raw", action="store_true",
                     help="write the model's text unchanged, escape sequences included (default: made inert)")
    gen.set_defaults(func=cmd_generate)

    conv = sub.add_parser("convert", help="convert a checkpoint to chatterm's safetensors format")
    conv.add_argument("src", help="checkpoint to read (any supported format)")
    conv.add_argument("dst", help="folder to write (a new or empty one, or any with --force)")
    conv.add_argument("--force", action="store_true", help="replace the checkpoint files in a folder that has files")
    conv.add_argument("--n-head", type=int, help="attention heads, for plain state dicts without a config")
    conv.add_argument("--dtype", default=None, help="store weights as fp32, bf16 or fp16 (default: as loaded)")
    conv.set_defaults(func=cmd_convert)

    for name, module in PLUGGED.items():
        try:
            import_module(module).add_parser(sub)
        except ImportError as e:
            stub = sub.add_parser(name, help=f"(unavailable: {e})")
            stub.set_defaults(func=lambda args, e=e: _raise(UserError(f"this command is unavailable ({e})")))
    return parser


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?",
                   help="checkpoint file or folder, or a server's http(s):// address (default: the shipped chat model)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--dtype", default=None,
                   help="auto, fp32, bf16, fp16, or int8/int4 (weight-only quantized, CPU) (default: auto)")
    p.add_argument("--n-head", type=int, metavar="N", help="attention heads, for plain state dicts without a config")
    p.add_argument("--context", type=int, metavar="N", help="cap the context window at N tokens (default: the model's, at most 4096)")
    remote = p.add_argument_group("remote servers (an http:// or https:// address instead of a checkpoint)")
    remote.add_argument("--remote-model", metavar="NAME", help="the served model to use (default: the only one)")
    remote.add_argument("--api-key-env", metavar="VAR", help="environment variable holding the API key "
                        "(default: OPENAI_API_KEY)")
    remote.add_argument("--remote-mode", choices=("auto", "chat", "completion"), default=None,
                        help="chat: the server applies the model's template; completion: chatterm's "
                        "User:/Assistant: template, for base models (default: auto)")


def _backend_options(args, path, device, dtype, config_api_key_env: str | None = None) -> dict:
    """The flags that say how to open a model, checked, as open_backend options. Every front end
    (TUI, plain REPL, generate) opens its model with these, so a flag means the same in each."""
    from .session.backend_factory import REMOTE_SCHEMES

    remote = {"model": args.remote_model, "api_key_env": args.api_key_env, "mode": args.remote_mode}
    if any(v is not None for v in remote.values()) and not str(path).startswith(REMOTE_SCHEMES):
        raise UserError(f"{path}: --remote-model, --api-key-env and --remote-mode are for a server address "
                        "(http:// or https://)")
    if args.context is not None and args.context < 2:
        raise UserError(f"--context {args.context}: the context window must be at least 2 tokens")
    remote["api_key_env"] = remote["api_key_env"] or config_api_key_env  # the flag wins
    return {"device": device, "dtype": dtype, "n_head": args.n_head, "context": args.context, **remote}


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    """One flag per setting in SPECS. Values stay text here and are checked by SPECS, so every
    front end gives the same message for the same mistake."""
    from .engine.settings import SPECS, format_value

    g = p.add_argument_group(
        "sampling", "Each setting's value comes from, lowest to highest: the built-in default (llama.cpp's: "
        "0.8 / 40 / 0.95 / 0.05), the model's recommended settings (its generation_config.json, or the "
        "model card's for a model `chatterm pull` installs), your config file, these flags, then /set in the session.")
    for spec in SPECS.values():
        built_in = format_value(spec, spec.default) or "none"
        help_text = f"{spec.help} (built-in: {built_in})".replace("%", "%%")
        if spec.kind is list:
            g.add_argument(spec.flag, dest=spec.name, action="append", default=None, metavar="TEXT",
                           help=help_text.replace("separated by '|'", "repeatable"))
        else:
            metavar = "{on,off,auto}" if spec.kind is bool else "N"
            g.add_argument(spec.flag, dest=spec.name, default=None, metavar=metavar, help=help_text)


def _layered_settings(args, config_values: dict | None = None):
    """Settings with the config's values and the command line's flags as layers (UserError on a bad flag)."""
    from .engine.settings import SPECS
    from .session.layered_settings import COMMAND_LINE, CONFIG, LayeredSettings

    settings = LayeredSettings()
    settings.set_layer(CONFIG, config_values or {})
    flags = {name: getattr(args, name) for name in SPECS if getattr(args, name, None) is not None}
    try:
        settings.set_layer(COMMAND_LINE, flags, how="text")
    except ValueError as e:
        raise UserError(str(e)) from None
    return settings


def _checked_device_args(args) -> None:
    from .model.device import check_device, check_dtype

    try:
        args.device = check_device(args.device) if args.device is not None else None
        args.dtype = check_dtype(args.dtype) if args.dtype is not None else None
    except ValueError as e:
        raise UserError(str(e)) from None


def _raise(e: Exception):
    raise e


# -- commands ----------------------------------------------------------------------------------


def cmd_chat(args) -> int:
    from .session.config import default_checkpoint, load_config

    _checked_device_args(args)
    config, problems = load_config(args.config)
    for name in ("device", "dtype", "theme"):
        if getattr(args, name):
            setattr(config, name, getattr(args, name))
    if args.system is not None:
        config.system_prompt = args.system
    settings = _layered_settings(args, config.sampling)
    checkpoint = args.checkpoint or config.model or str(default_checkpoint())
    if args.web:
        return _serve_web(args, checkpoint, config, problems)
    from .web import in_browser_session

    if args.plain or not (sys.stdin.isatty() and sys.stdout.isatty() or in_browser_session()):
        return _plain_chat(config, settings, checkpoint, problems, args)
    from .ui.app import ChatApp

    app = ChatApp(config, checkpoint, problems, settings=settings, resume=_resume(args),
                  backend_options=_backend_options(args, checkpoint, config.device, config.dtype, config.api_key_env))
    _quit_on_terminate(app)
    if in_browser_session():  # the server ends its sessions by a quit message (as Ctrl+Q); the Ctrl+C
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # typed at the server's terminal is not for them
    app.run()
    app.session.stop()  # the web driver's quit skips Ctrl+Q's stop: end a reply in flight before exit joins it
    return app.return_code or 0


def _resume(args) -> str:
    """How to start: "last" (-c, --continue), "pick" (--resume) or "" (a new chat)."""
    return "last" if args.continue_last else "pick" if args.resume else ""


def _serve_web(args, checkpoint, config, problems) -> int:
    """Check the flags once here (each browser tab's session reads them again), then serve."""
    from .session.backend_factory import REMOTE_SCHEMES
    from .session.models import resolve_model
    from .session.sanitize import printable
    from .web import serve_chat

    for problem in problems:
        print(f"chatterm: warning: {printable(problem)}", file=sys.stderr)
    _backend_options(args, checkpoint, config.device, config.dtype)
    if not str(checkpoint).startswith(REMOTE_SCHEMES) and not resolve_model(checkpoint).exists():
        raise UserError(f"{checkpoint}: no such file or folder, nor an installed model")
    return serve_chat(args)


def _quit_on_terminate(app) -> None:
    """SIGTERM and SIGHUP end the TUI as Ctrl+Q does: the reply in flight stops within a token (kept,
    marked "stopped", saved by its worker, which the interpreter joins before exiting) and Textual
    restores the terminal (alternate screen and mouse tracking off) instead of dying mid-screen."""
    import asyncio

    def handler(signum, frame):
        app.session.stop()
        try:
            loop = asyncio.get_running_loop()  # the handler runs on the main thread, inside the app's loop
        except RuntimeError:
            raise SystemExit(128 + signum) from None
        loop.call_soon_threadsafe(lambda: app.exit(return_code=128 + signum))

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def _plain_chat(config, settings, checkpoint, problems, args) -> int:
    from .repl import PlainChat
    from .session import ChatSession, Conversation, ConversationStore
    from .session.config import data_dir
    from .session.sanitize import printable

    for problem in problems:
        print(f"chatterm: warning: {printable(problem)}", file=sys.stderr)

    options = _backend_options(args, checkpoint, config.device, config.dtype, config.api_key_env)

    def load(path):
        return _load_backend(path, options)

    session = ChatSession(
        load(checkpoint),
        settings.live,
        Conversation(system=config.system_prompt),
        ConversationStore(data_dir() / "conversations"),
        warn=lambda text: print(f"chatterm: warning: {printable(text)}", file=sys.stderr, flush=True),
        autosave=sys.stdin.isatty() or args.save or bool(_resume(args)),  # -c: it goes on in its file
    )
    chat = PlainChat(session, settings=settings, config=config, load_backend=load, hide_thinking=args.hide_thinking)
    if sys.stdin.isatty() and sys.stdout.isatty():
        info = session.backend.info
        print(f"chatterm: {printable(info.name)} on {info.device} ({info.dtype}); /help for commands, Ctrl+D to quit",
              file=sys.stderr)
    if _resume(args):
        chat.commands.resume(_resume(args))
    return chat.run_terminal() if chat.interactive else chat.run(sys.stdin)


def _load_backend(path, options: dict):
    from .session.backend_factory import REMOTE_SCHEMES, open_backend
    from .session.sanitize import printable

    try:
        progress = _progress_line if sys.stderr.isatty() and not str(path).startswith(REMOTE_SCHEMES) else None
        backend = open_backend(path, progress=progress, **options)
    except ValueError as e:  # bad --device / --dtype; a server refusing, absent or unreachable
        raise UserError(str(e)) from None
    for warning in backend.warnings:  # e.g. plain http to another machine
        print(f"chatterm: warning: {printable(warning)}", file=sys.stderr)
    return backend


def _progress_line(what: str, fraction: float) -> None:
    """Loading progress of a big model, redrawn on one stderr line (cleared when done). `what`
    may name a file a checkpoint's index chose: made inert like every other line."""
    from .session.sanitize import printable

    if fraction >= 1.0:
        print("\r\033[K", end="", file=sys.stderr, flush=True)
        return
    bar = "█" * int(fraction * 30)
    print(f"\rchatterm: {printable(what)} {bar:<30} {fraction:4.0%}", end="", file=sys.stderr, flush=True)


def cmd_generate(args) -> int:
    from .engine.events import Finished, TextDelta
    from .session import ChatSession, Conversation
    from .session.config import default_checkpoint
    from .session.sanitize import printable
    from .session.trimmed_stream import TrimmedStream

    _checked_device_args(args)
    layers = _layered_settings(args)  # generate ignores the user's config: scripts give the same output everywhere
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt:
        raise UserError("the prompt is empty")
    path = args.checkpoint or str(default_checkpoint())
    backend = _load_backend(path, _backend_options(args, path, args.device, args.dtype))
    settings = _with_model_recommendation(layers, backend)
    if args.chat:
        try:
            events = ChatSession(backend, settings, Conversation()).send(prompt)
        except ValueError as e:  # a blank message
            raise UserError(str(e)) from None
        events = _chat_failures_as_user_errors(events)
    else:
        try:
            events = backend.complete_stream(prompt, settings)  # on the torch thread, like chat replies
        except ValueError as e:  # the tokenizer fails on the prompt
            raise UserError(str(e)) from None
    done = None
    trimmed = TrimmedStream(strip_leading=args.chat)
    for event in events:
        if isinstance(event, TextDelta):
            text = trimmed.feed(event.text)
            sys.stdout.write(text if args.raw else printable(text))  # `| cat` still reaches a terminal
            sys.stdout.flush()
        elif isinstance(event, Finished):
            done = event
    sys.stdout.write("\n")  # trailing whitespace was held back: the text ends with exactly one newline
    if done is not None and args.stats:
        print(
            f"{done.new_tokens} tokens, stop: {done.stop_reason}, time to first token {done.ttft_s * 1000:.0f} ms, "
            f"{done.tokens_per_s:.1f} tokens/s",
            file=sys.stderr,
        )
    if done is not None and done.error:  # a fault mid-reply (a server that died, say): one line, exit 2
        print(f"chatterm: error: {printable(done.error)}", file=sys.stderr)
        return 2
    return 0


def _chat_failures_as_user_errors(events):
    """The reply's events; the model's template or tokenizer failing on the prompt (a ValueError
    with a one-line message: TemplateError, TokenizerError) ends `generate` with that line."""
    try:
        yield from events
    except ValueError as e:
        raise UserError(getattr(e, "reason", str(e))) from None  # MessageNotSent: there is no chat here


def _with_model_recommendation(layers, backend):
    """The live settings once the model's recommended ones are a layer; bad ones are warnings."""
    from .session.layered_settings import MODEL, model_recommendation
    from .session.sanitize import printable

    recommended, problems = model_recommendation(backend)
    for problem in problems:  # they name the model, a name its files chose
        print(f"chatterm: warning: {printable(problem)}", file=sys.stderr)
    layers.set_layer(MODEL, recommended)
    return layers.live


def _check_convert_destination(dst: Path, force: bool) -> None:
    """Like /save: a folder that already holds files is written to only with --force (it may
    be another checkpoint), and never anything but a folder."""
    if not dst.exists() and not dst.is_symlink():
        return
    if not dst.is_dir():
        raise UserError(f"{dst}: is not a folder; convert writes a folder (model.safetensors + chatterm.json), "
                        "choose another path")
    if any(dst.iterdir()) and not force:
        raise UserError(f"{dst}: already holds files; add --force to write the checkpoint into it")


def cmd_convert(args) -> int:
    from .model import load_checkpoint, pick_dtype, save_checkpoint
    from .model.checkpoint import checkpoint_family
    from .model.device import dtype_name

    try:
        dtype = pick_dtype(args.dtype, __import__("torch").device("cpu"))
    except ValueError as e:
        raise UserError(str(e)) from None
    _check_convert_destination(Path(args.dst).expanduser(), args.force)
    family = checkpoint_family(args.src, n_head=args.n_head)  # before any weight is read
    if family != "gpt2":  # chatterm's format holds GPT configs only
        raise UserError(f"{args.src}: converting {family} models is not supported; "
                        "chatterm opens this file or folder directly")
    ckpt = load_checkpoint(args.src, precision=dtype and dtype_name(dtype), n_head=args.n_head)
    meta = dict(ckpt.meta)
    if "tokenizer" not in meta and ckpt.config.vocab_size >= 50257:
        meta["tokenizer"] = {"type": "gpt2"}
    meta.setdefault("name", ckpt.name)
    meta["converted_from"] = {"path": str(ckpt.path), "format": ckpt.format}
    out = save_checkpoint(args.dst, ckpt.model, meta)
    from .session.sanitize import printable

    print(printable(f"wrote {out} ({ckpt.format} -> chatterm, {ckpt.model.num_params():,} parameters)"))
    return 0
