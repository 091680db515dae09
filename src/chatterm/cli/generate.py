"""`chatterm generate`: stream a completion of a prompt (or with --chat, one reply) to stdout,
then exactly one newline, the same on a terminal and a pipe. It ignores the user's config, so a
script gets the same output everywhere."""

from __future__ import annotations

import argparse
import sys

from .. import notices
from .arguments import add_model_args, add_sampling_args, backend_options, checked_device_args, layered_settings, load_backend
from .errors import UserError


def add_parser(sub) -> None:
    gen = sub.add_parser(
        "generate", help="stream a completion of a prompt to stdout",
        description="Stream the model's text to stdout, then exactly one newline (the same on a terminal and "
        "a pipe). A completion is printed as generated, so prompt + output is the text (its leading space "
        "kept); a --chat reply is trimmed, as it is saved. Trailing whitespace is dropped in both.")
    add_model_args(gen)
    add_sampling_args(gen)
    gen.add_argument("--prompt", required=True, help="prompt text, or - to read stdin")
    gen.add_argument("--chat", action="store_true", help="treat the prompt as one user message of a chat")
    gen.add_argument("--stats", action="store_true", help="print speed figures to stderr at the end")
    gen.add_argument("--raw", action="store_true",
                     help="write the model's text unchanged, escape sequences included (default: made inert)")
    gen.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    from ..session.user.folders import default_checkpoint

    checked_device_args(args)
    layers = layered_settings(args)  # generate ignores the user's config: scripts give the same output everywhere
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt:
        raise UserError("the prompt is empty")
    path = args.checkpoint or str(default_checkpoint())
    backend = load_backend(path, backend_options(args, path, args.device, args.dtype))
    try:
        return _generate(args, prompt, backend, _with_model_recommendation(layers, backend))
    finally:
        backend.close()


def _generate(args, prompt: str, backend, settings) -> int:
    """Stream the reply to `prompt` to stdout (the chat template's with --chat, else a plain continuation)."""
    from ..engine.events import Finished, TextDelta
    from ..session import ChatSession, Conversation
    from ..session.sanitize import printable
    from ..session.trimmed_stream import TrimmedStream

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
        notices.error(done.error)
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
    from ..session.user.layered_settings import MODEL, model_recommendation

    recommended, problems = model_recommendation(backend)
    for problem in problems:  # they name the model, a name its files chose
        notices.warn(problem)
    layers.set_layer(MODEL, recommended)
    return layers.live
