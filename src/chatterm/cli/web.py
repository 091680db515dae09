"""`chatterm --web`: the chat TUI served to a browser on this machine, with textual-serve.

- `serve_chat(args)` serves until Ctrl+C (or SIGTERM), then sends each session textual-serve's
  quit message, waits for them to end, and returns 0. Sessions ignore SIGINT (chat.py): the
  Ctrl+C typed at the server's terminal reaches the whole process group, and a session must end
  through that message, the TUI's own exit. Each browser tab gets its own `chatterm chat ...`
  process: textual-serve runs one shell command per websocket. That command is
  `session_command(args)`: this interpreter, `-m chatterm`, and the chat flags the server was
  started with (checkpoint, --context, remote and sampling flags, ...), rebuilt from the parsed
  flags and every one shlex-quoted, so no text of the user's reaches the shell unquoted.
- The server listens on 127.0.0.1 only. Remote use goes through an SSH tunnel
  (`ssh -L PORT:127.0.0.1:PORT host`, the same PORT at both ends: the page names its own
  address), never a public socket: whoever reaches the port can use the model and read the
  saved chats.
- Only pages of this server may drive a session: a websocket from another origin (any web page
  open in the same browser may try `ws://127.0.0.1:PORT`, websockets are not bound by the
  same-origin policy) and a request naming another host (DNS rebinding) are refused with 403.
  And only someone who knows the address printed at start: it carries a random token (kept in
  a cookie by the page), since on a shared machine every local user reaches 127.0.0.1, and a
  chat session can read your chats and write files as you (/export).
- The page needs nothing from the network: textual-serve ships its JavaScript, CSS and the Roboto
  Mono font; the one external link of its page (a Google Fonts stylesheet) is replaced by
  @font-face rules for the shipped font files.
- textual-serve is an optional extra (`pip install 'chatterm[web]'`); without it `--web` is a
  one-line error (exit code 2). Importing this module never imports it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import secrets
import shlex
import socket
import sys
from pathlib import Path

from .errors import UserError

HOST = "127.0.0.1"
DEFAULT_PORT = 8000
INSTALL_HINT = "pip install 'chatterm[web]'"
WEB_ONLY = ("web", "port")  # flags of the server, not passed on to the sessions it starts
CHAT_PARSER = "chat_parser"  # where add_arguments leaves the chat parser in the parsed flags
SESSION_EXIT_SECONDS = 120  # at Ctrl+C, how long the server waits for its sessions to end

# textual-serve's page links this stylesheet; offline it stalls or fails, online it tells Google.
_FONT_LINK = re.compile(r"<link\b[^>]*fonts\.googleapis\.com[^>]*>", re.DOTALL)
_SHIPPED_FONT = """<style>
      @font-face { font-family: "Roboto Mono"; font-weight: 100 700;
        src: url("{{ config.static.url }}fonts/RobotoMono-VariableFont_wght.ttf") format("truetype"); }
      @font-face { font-family: "Roboto Mono"; font-style: italic; font-weight: 100 700;
        src: url("{{ config.static.url }}fonts/RobotoMono-Italic-VariableFont_wght.ttf") format("truetype"); }
    </style>"""


def add_arguments(chat: argparse.ArgumentParser) -> None:
    """--web and --port on the chat parser, which is kept in the parsed flags so that
    session_argv can rebuild the command line from every flag the chat parser knows."""
    chat.add_argument("--web", action="store_true",
                      help=f"serve this chat to a browser on this machine (127.0.0.1 only; needs {INSTALL_HINT})")
    chat.add_argument("--port", type=int, default=DEFAULT_PORT, metavar="N",
                      help=f"the port for --web (default: {DEFAULT_PORT}; 0: any free port)")
    chat.set_defaults(**{CHAT_PARSER: chat})


def in_browser_session() -> bool:
    """True in a process that textual-serve started: Textual draws to a browser through its web
    driver, over pipes, so the TUI runs although stdin and stdout are not terminals."""
    return os.environ.get("TEXTUAL_DRIVER", "").endswith(":WebDriver")


def session_argv(args: argparse.Namespace) -> list[str]:
    """`chat` and the flags that reproduce `args` (less --web and --port), in argparse's own
    spelling. Values are passed as `--flag=VALUE` so that one starting with '-' stays a value,
    and the checkpoint comes last after `--`."""
    parser: argparse.ArgumentParser = getattr(args, CHAT_PARSER)
    argv, positionals = ["chat"], []
    for action in parser._actions:  # argparse has no public list of a parser's arguments
        if action.dest in WEB_ONLY or action.default is argparse.SUPPRESS:
            continue  # --help
        value = getattr(args, action.dest, action.default)
        if value is None or value == action.default:
            continue
        if not action.option_strings:
            positionals += value if isinstance(value, list) else [value]
            continue
        flag = max(action.option_strings, key=len)
        if action.nargs == 0 or (action.nargs == "?" and value == action.const):
            if value != action.const:
                raise ValueError(f"cannot pass on {flag} = {value!r}")  # a new kind of flag: teach this function
            argv.append(flag)
        else:
            for item in value if isinstance(value, list) else [value]:
                argv.append(f"{flag}={item}" if flag.startswith("--") else f"{flag}{item}")
    return argv + (["--", *map(str, positionals)] if positionals else [])


def session_command(args: argparse.Namespace) -> str:
    """The shell command that textual-serve runs for each browser tab."""
    return shlex.join([sys.executable, "-m", "chatterm", *session_argv(args)])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def child_pids() -> list[int]:
    """This process's live children, from Linux's /proc (elsewhere: none known, so no wait)."""
    me, children = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, parent = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, IndexError):
            continue  # ended while we looked
        if int(parent) == me and state != "Z":
            children.append(int(stat.parent.name))
    return children


def checked_port(port: int) -> int:
    """The port to serve on (0 picks a free one); UserError when it is out of range or taken."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port}: a port is a number from 1 to 65535 (0: any free port)")
    if port == 0:
        return free_port()
    with socket.socket() as probe:
        try:
            probe.bind((HOST, port))
        except OSError as e:
            raise UserError(f"--port {port}: cannot listen on {HOST}:{port} ({e.strerror}); "
                            "pick another with --port N") from None
    return port


def serve_chat(args: argparse.Namespace) -> int:
    """Serve the chat that `args` describes until Ctrl+C; print the address to open."""
    if getattr(args, "plain", False):
        raise UserError("--web serves the TUI; --plain is for the terminal (use one of them)")
    if os.name == "nt":  # textual-serve runs each session through cmd.exe, which shlex's quoting does not fit
        raise UserError("--web needs a POSIX shell (Linux, macOS); it is not supported on Windows")
    server_class = _server_class()
    port = checked_port(args.port)
    server = server_class(session_command(args), port)
    server.serve()
    return 0


def _server_class():
    try:
        import aiohttp_jinja2
        import jinja2
        from aiohttp import web
        from textual_serve.server import Server
    except ImportError:
        raise UserError(f"--web needs textual-serve: {INSTALL_HINT}") from None

    class OfflinePage(jinja2.FileSystemLoader):
        """textual-serve's page with the shipped font in place of the Google Fonts link."""

        def get_source(self, environment, template):
            source, filename, uptodate = super().get_source(environment, template)
            return _FONT_LINK.sub(_SHIPPED_FONT, source), filename, uptodate

    class ChatServer(Server):
        """textual-serve's server on 127.0.0.1, for pages of its own origin that know its token."""

        def __init__(self, command: str, port: int):
            super().__init__(command, host=HOST, port=port, title="chatterm")
            self.token = secrets.token_urlsafe(24)
            self.url = f"http://{HOST}:{port}/?token={self.token}"
            self.cookie = f"chatterm-token-{port}"  # cookies are not kept apart by port: name it by port
            self.home = f"{HOST}:{port}"  # the page's script, styles and websocket are named by this address
            self.allowed_hosts = {f"{name}:{port}" for name in (HOST, "localhost", "[::1]")}

        async def _make_app(self):
            app = await super()._make_app()
            aiohttp_jinja2.setup(app, loader=OfflinePage(self.templates_path))
            app.middlewares.append(self.guard)
            app.on_cleanup.append(self.wait_for_sessions)
            return app

        async def wait_for_sessions(self, app) -> None:
            """textual-serve stops waiting for a session when its output ends, but the process may
            still be saving or joining its threads: wait for it here, while the event loop that
            watches it still runs (else the server exits first and asyncio complains)."""
            deadline = asyncio.get_running_loop().time() + SESSION_EXIT_SECONDS
            while child_pids() and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)  # polling the process table; bounded by the deadline
            await asyncio.sleep(0)  # let the child watcher's last callbacks run

        @web.middleware
        async def guard(self, request, handler):
            origin = request.headers.get("Origin")  # browsers always send it with a websocket
            origin_host = origin.split("://", 1)[-1] if origin else None
            if request.host not in self.allowed_hosts or (origin and origin_host not in self.allowed_hosts):
                raise web.HTTPForbidden(text="chatterm serves only pages of its own address\n")
            if request.host != self.home:  # else the token's cookie would be another host's than the websocket's
                raise web.HTTPFound(f"http://{self.home}{request.path_qs}")
            if request.path.startswith("/static/"):
                return await handler(request)  # textual-serve's public assets
            by_query = secrets.compare_digest(request.query.get("token", ""), self.token)
            if not (by_query or secrets.compare_digest(request.cookies.get(self.cookie, ""), self.token)):
                raise web.HTTPForbidden(text="open the address chatterm printed, with its ?token=\n")
            response = await handler(request)
            if by_query and not response.prepared:  # the page's websocket then proves itself by cookie
                response.set_cookie(self.cookie, self.token, httponly=True, samesite="Strict")
            return response

        def initialize_logging(self) -> None:
            super().initialize_logging()
            logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # not a line per request

        async def on_startup(self, app) -> None:
            print(f"chatterm: serving the chat at {self.url} (open it in a browser on this machine; "
                  "Ctrl+C stops)", flush=True)

        async def on_shutdown(self, app) -> None:
            print("chatterm: stopping; waiting for the open chats to close (a model still loading "
                  "finishes loading first)", flush=True)

    return ChatServer
