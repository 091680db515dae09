"""Command line: `chatterm [CHECKPOINT]` chats; subcommands generate, convert, prepare, train,
eval, bench.

Errors a user can cause (a bad path, a broken checkpoint, an absurd setting) end with one line on
stderr and exit code 2; tracebacks are only for bugs.
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

from . import __version__

SUBCOMMANDS = ("chat", "generate", "convert", "prepare", "train", "eval", "bench")
# Modules that register their own subcommand with `add_parser(subparsers)`.
PLUGGED = {"train": "chatterm.train.command", "bench": "chatterm.bench"}  # train also adds prepare, eval


class UserError(Exception):
    """Ends the program with a one-line message and exit code 2."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS + ("-h", "--help", "--version"):
        argv.insert(0, "chat")  # `chatterm [CHECKPOINT] [flags]` means `chatterm chat ...`
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"chatterm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # user-caused errors from the lower layers carry one-line messages
        from .model.errors import CheckpointError

        if isinstance(e, (CheckpointError, FileNotFoundError)):
            print(f"chatterm: error: {e}", file=sys.stderr)
            return 2
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatterm", description="Chat with GPT-style checkpoints in the terminal.")
    parser.add_argument("--version", action="version", version=f"chatterm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    chat = sub.add_parser("chat", help="chat in the TUI (default) or a plain REPL")
    _add_model_args(chat)
    _add_sampling_args(chat)
    chat.add_argument("--plain", action="store_true", help="plain line REPL instead of the TUI")
    chat.add_argument("--system", help="system prompt")
    chat.add_argument("--theme", help="colour theme")
    chat.add_argument("--config", help="config file (default: the user config dir's config.toml)")
    chat.set_defaults(func=cmd_chat)

    gen = sub.add_parser("generate", help="stream a completion of a prompt to stdout")
    _add_model_args(gen)
    _add_sampling_args(gen)
    gen.add_argument("--prompt", required=True, help="prompt text, or - to read stdin")
    gen.add_argument("--chat", action="store_true", help="treat the prompt as one user message of a chat")
    gen.add_argument("--stats", action="store_true", help="print speed figures to stderr at the end")
    gen.set_defaults(func=cmd_generate)

    conv = sub.add_parser("convert", help="convert a checkpoint to chatterm's safetensors format")
    conv.add_argument("src", help="checkpoint to read (any supported format)")
    conv.add_argument("dst", help="folder to write")
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
    p.add_argument("checkpoint", nargs="?", help="checkpoint file or folder (default: the shipped chat model)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default=None, help="auto, fp32, bf16 or fp16")
    p.add_argument("--n-head", type=int, help="attention heads, for plain state dicts without a config")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    """One flag per setting in SPECS. Values stay text here and are checked by SPECS, so every
    front end gives the same message for the same mistake."""
    from .engine.settings import SPECS, format_value

    g = p.add_argument_group(
        "sampling", "Each setting's value comes from, lowest to highest: the built-in default (neutral: every "
        "filter off), the model's recommended settings, your config file, these flags, then /set in the session.")
    for spec in SPECS.values():
        built_in = format_value(spec, spec.default) or "none"
        help_text = f"{spec.help} (built-in: {built_in})".replace("%", "%%")
        if spec.kind is list:
            g.add_argument(spec.flag, dest=spec.name, action="append", default=None, metavar="TEXT",
                           help=help_text.replace("separated by '|'", "repeatable"))
        else:
            g.add_argument(spec.flag, dest=spec.name, default=None, metavar="N", help=help_text)


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
    if args.plain or not (sys.stdin.isatty() and sys.stdout.isatty()):
        return _plain_chat(config, settings, checkpoint, problems, args)
    from .ui.app import ChatApp

    ChatApp(config, checkpoint, problems, settings=settings).run()
    return 0


def _plain_chat(config, settings, checkpoint, problems, args) -> int:
    from .repl import PlainChat
    from .session import ChatSession, Conversation, ConversationStore
    from .session.config import data_dir

    for problem in problems:
        print(f"chatterm: warning: {problem}", file=sys.stderr)

    def load(path):
        return _load_backend(path, config.device, config.dtype, args.n_head)

    session = ChatSession(
        load(checkpoint),
        settings.live,
        Conversation(system=config.system_prompt),
        ConversationStore(data_dir() / "conversations"),
    )
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    chat = PlainChat(session, settings=settings, config=config, load_backend=load)
    if interactive:
        info = session.backend.info
        print(f"chatterm: {info.name} on {info.device} ({info.dtype}); /help for commands, Ctrl+D to quit", file=sys.stderr)
        print("> ", end="", flush=True)
    return chat.run(sys.stdin)


def _load_backend(path, device, dtype, n_head=None):
    from .session.backends import open_backend

    try:
        return open_backend(path, device=device, dtype=dtype, n_head=n_head)
    except ValueError as e:  # bad --device / --dtype, a remote backend that is not there
        raise UserError(str(e)) from None


def cmd_generate(args) -> int:
    from .engine.events import Finished, TextDelta
    from .session import ChatSession, Conversation
    from .session.config import default_checkpoint
    from .session.sanitize import printable

    _checked_device_args(args)
    layers = _layered_settings(args)  # generate ignores the user's config: scripts give the same output everywhere
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt:
        raise UserError("the prompt is empty")
    backend = _load_backend(args.checkpoint or str(default_checkpoint()), args.device, args.dtype, args.n_head)
    settings = _with_model_recommendation(layers, backend)
    if args.chat:
        events = ChatSession(backend, settings, Conversation()).send(prompt)
    elif hasattr(backend, "complete_stream"):
        events = backend.complete_stream(prompt, settings)  # on the torch thread, like chat replies
    else:
        raise UserError(f"{backend.info.source or backend.info.name} only does chat replies; add --chat")
    done = None
    for event in events:
        if isinstance(event, TextDelta):
            sys.stdout.write(printable(event.text))  # `| cat` still reaches a terminal
            sys.stdout.flush()
        elif isinstance(event, Finished):
            done = event
    sys.stdout.write("\n")
    if done is not None and args.stats:
        print(
            f"{done.new_tokens} tokens, stop: {done.stop_reason}, time to first token {done.ttft_s * 1000:.0f} ms, "
            f"{done.tokens_per_s:.1f} tokens/s",
            file=sys.stderr,
        )
    if done is not None and done.error:
        print(f"chatterm: error: {done.error}", file=sys.stderr)
        return 1
    return 0


def _with_model_recommendation(layers, backend):
    """The live settings once the model's recommended ones are a layer; bad ones are warnings."""
    from .session.layered_settings import MODEL, model_recommendation

    recommended, problems = model_recommendation(backend)
    for problem in problems:
        print(f"chatterm: warning: {problem}", file=sys.stderr)
    layers.set_layer(MODEL, recommended)
    return layers.live


def cmd_convert(args) -> int:
    from .model import load_checkpoint, pick_dtype, save_checkpoint

    try:
        dtype = pick_dtype(args.dtype, __import__("torch").device("cpu"))
    except ValueError as e:
        raise UserError(str(e)) from None
    ckpt = load_checkpoint(args.src, dtype=dtype, n_head=args.n_head)
    meta = dict(ckpt.meta)
    if "tokenizer" not in meta and ckpt.config.vocab_size >= 50257:
        meta["tokenizer"] = {"type": "gpt2"}
    meta.setdefault("name", ckpt.name)
    meta["converted_from"] = {"path": str(ckpt.path), "format": ckpt.format}
    out = save_checkpoint(args.dst, ckpt.model, meta)
    print(f"wrote {out} ({ckpt.format} -> chatterm, {ckpt.model.num_params():,} parameters)")
    return 0
