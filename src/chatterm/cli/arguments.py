"""The flags that `chat` and `generate` share, and what they mean: the model flags become
`open_backend` options (so a flag means the same in the TUI, the plain REPL and generate), the
sampling flags a layer of the settings, checked by `SPECS` (so every front end gives the same
message for the same mistake). `load_backend` opens the model they name."""

from __future__ import annotations

import argparse
import sys

from .. import notices
from .errors import UserError


def add_model_args(p: argparse.ArgumentParser) -> None:
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


def backend_options(args, path, device, dtype, config_api_key_env: str | None = None) -> dict:
    """The flags that say how to open a model, checked, as open_backend options. Every front end
    (TUI, plain REPL, generate) opens its model with these, so a flag means the same in each."""
    from ..session.backends.factory import REMOTE_SCHEMES

    remote = {"model": args.remote_model, "api_key_env": args.api_key_env, "mode": args.remote_mode}
    if any(v is not None for v in remote.values()) and not str(path).startswith(REMOTE_SCHEMES):
        raise UserError(f"{path}: --remote-model, --api-key-env and --remote-mode are for a server address "
                        "(http:// or https://)")
    if args.context is not None and args.context < 2:
        raise UserError(f"--context {args.context}: the context window must be at least 2 tokens")
    remote["api_key_env"] = remote["api_key_env"] or config_api_key_env  # the flag wins
    return {"device": device, "dtype": dtype, "n_head": args.n_head, "context": args.context, **remote}


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """One flag per setting in SPECS. Values stay text here and are checked by SPECS, so every
    front end gives the same message for the same mistake."""
    from ..engine.settings import SPECS, format_value

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


def layered_settings(args, config_values: dict | None = None):
    """Settings with the config's values and the command line's flags as layers (UserError on a bad flag)."""
    from ..engine.settings import SPECS
    from ..session.user.layered_settings import COMMAND_LINE, CONFIG, LayeredSettings

    settings = LayeredSettings()
    settings.set_layer(CONFIG, config_values or {})
    flags = {name: getattr(args, name) for name in SPECS if getattr(args, name, None) is not None}
    try:
        settings.set_layer(COMMAND_LINE, flags, how="text")
    except ValueError as e:
        raise UserError(str(e)) from None
    return settings


def checked_device_args(args) -> None:
    from ..model.device import check_device, check_dtype

    try:
        args.device = check_device(args.device) if args.device is not None else None
        args.dtype = check_dtype(args.dtype) if args.dtype is not None else None
    except ValueError as e:
        raise UserError(str(e)) from None


def load_backend(path, options: dict):
    """The backend for `path` with `backend_options`; its warnings (plain http to another
    machine, say) are printed."""
    from ..session.backends.factory import REMOTE_SCHEMES, open_backend

    try:
        progress = _progress_line if sys.stderr.isatty() and not str(path).startswith(REMOTE_SCHEMES) else None
        backend = open_backend(path, progress=progress, **options)
    except ValueError as e:  # bad --device / --dtype; a server refusing, absent or unreachable
        raise UserError(str(e)) from None
    for warning in backend.warnings:
        notices.warn(warning)
    return backend


def _progress_line(what: str, fraction: float) -> None:
    """Loading progress of a big model, redrawn on one stderr line (cleared when done). `what`
    may name a file a checkpoint's index chose: made inert like every other line."""
    from ..session.sanitize import printable

    if fraction >= 1.0:
        print("\r\033[K", end="", file=sys.stderr, flush=True)
        return
    bar = "█" * int(fraction * 30)
    print(f"\rchatterm: {printable(what)} {bar:<30} {fraction:4.0%}", end="", file=sys.stderr, flush=True)
