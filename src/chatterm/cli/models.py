"""`chatterm pull NAME` and `chatterm models`: install and list models (see session/user/installed_models.py)."""

from __future__ import annotations

import sys

from .errors import UserError


def add_parser(sub) -> None:
    pull = sub.add_parser("pull", help="install a known model into the user data folder")
    pull.add_argument("name", help="model name, e.g. smollm2-135m-instruct (`chatterm models --known` lists them)")
    pull.set_defaults(func=cmd_pull)
    models = sub.add_parser("models", help="list installed models")
    models.add_argument("--known", action="store_true", help="list the models `chatterm pull` can install")
    models.set_defaults(func=cmd_models)


def cmd_pull(args) -> int:
    from ..session.user.installed_models import PullError, pull

    def show(line: str) -> None:
        end = "\r" if line.startswith("extracting") and sys.stderr.isatty() else "\n"
        print(f"chatterm: {line}", end=end, file=sys.stderr, flush=True)

    try:
        pull(args.name, progress=show)
    except PullError as e:
        raise UserError(str(e)) from None
    print(f"chat with it: chatterm {args.name}", file=sys.stderr)
    return 0


def cmd_models(args) -> int:
    from ..session.user.installed_models import KNOWN_MODELS, describe_installed, models_dir
    from ..session.sanitize import printable

    if args.known:
        for model in KNOWN_MODELS.values():
            print(f"{model.name:28} {model.description}")
        return 0
    lines = describe_installed()
    if not lines:
        print(f"no models installed in {models_dir()}; try: chatterm pull smollm2-135m-instruct", file=sys.stderr)
    for line in lines:
        print(printable(line))  # folder names in the models folder are anyone's
    return 0
