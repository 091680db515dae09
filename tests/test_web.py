"""`chatterm --web`: the command each browser tab runs, the server's page and its guards, the
errors, and a chat in a real headless Chromium (scripts/web_check.py drives it)."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from chatterm.cli import web
from chatterm.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
PARROT = ROOT / "tests" / "data" / "snapshot_parrot"  # saved: no training; replies "hello there, friend" to "hi"
_spec = importlib.util.spec_from_file_location("web_check", ROOT / "scripts" / "web_check.py")
web_check = sys.modules["web_check"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(web_check)

HAVE_TEXTUAL_SERVE = importlib.util.find_spec("textual_serve") is not None
needs_textual_serve = pytest.mark.skipif(not HAVE_TEXTUAL_SERVE,
                                         reason="textual-serve is not installed: pip install 'chatterm[web]'")
SERVER_ONLY = {"web", "port", "func", "command", web.CHAT_PARSER}

HOSTILE = "'; touch {marker} #\" $(touch {marker}) `touch {marker}`"


def parsed(*argv):
    return build_parser().parse_args(["chat", *argv])


def forwarded(args) -> dict:
    return {name: value for name, value in vars(args).items() if name not in SERVER_ONLY}


@pytest.mark.parametrize("argv", [
    [str(PARROT), "--context", "64", "--temperature", "0", "--stop", "a b", "--stop=-x", "--system=-be terse",
     "--device", "cpu", "--theme", "chatterm-light", "--config", "my config.toml", "--n-head", "2"],
    ["http://127.0.0.1:1/v1", "--remote-model", "my model", "--api-key-env", "MY_KEY", "--remote-mode", "chat"],
    ["--max-new-tokens", "5", "--", "-odd dir/ckpt"],  # a checkpoint that looks like a flag
    [],  # the default model: the session finds it as the terminal app would
])
def test_session_command_carries_the_flags_and_reparses_to_the_same(argv):
    args = parsed("--web", "--port", "0", *argv)
    command = shlex.split(web.session_command(args))
    assert command[:3] == [sys.executable, "-m", "chatterm"]
    again = build_parser().parse_args(command[3:])
    assert again.web is False and forwarded(again) == forwarded(args)


def test_every_chat_flag_is_passed_on():
    """A flag added to `chatterm chat` later reaches the browser sessions too (or this fails)."""
    for action in parsed().chat_parser._actions:
        if not action.option_strings or action.dest in SERVER_ONLY or action.default is argparse.SUPPRESS:
            continue
        if action.nargs == 0:
            value = action.const
        elif action.choices:
            value = next(c for c in action.choices if c != action.default)
        elif action.type is int:
            value = 3
        else:
            value = ["x y"] if isinstance(action, argparse._AppendAction) else "x y"
        args = parsed()
        setattr(args, action.dest, value)
        again = build_parser().parse_args(web.session_argv(args))
        assert getattr(again, action.dest) == value, action.option_strings


def test_the_shell_gets_each_argument_as_given(tmp_path):
    """textual-serve runs the command with a shell: quotes, $(...) and backquotes stay text."""
    marker = tmp_path / "marker"
    hostile = HOSTILE.format(marker=marker)
    args = parsed(str(PARROT), "--web", "--system", hostile, "--stop", hostile, "--config", f"{tmp_path}/a b.toml")
    echo = shlex.join([sys.executable, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))",
                       *web.session_argv(args)])
    out = subprocess.run(echo, shell=True, capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == web.session_argv(args)
    assert f"--system={hostile}" in json.loads(out)
    assert not marker.exists()


@needs_textual_serve
async def test_the_page_is_served_with_its_own_assets_only(capsys):
    from aiohttp import CookieJar
    from aiohttp.test_utils import TestClient, TestServer

    port = web.free_port()
    server = web._server_class()(web.session_command(parsed(str(PARROT), "--web")), port)
    home = f"http://127.0.0.1:{port}"
    async with TestClient(TestServer(await server._make_app(), host=web.HOST, port=port),
                          cookie_jar=CookieJar(unsafe=True)) as client:  # unsafe: keep cookies of IP addresses
        assert (await client.get("/")).status == 403  # no token: another user of this machine
        assert (await client.get("/?token=wrong")).status == 403
        page = await client.get(f"/?token={server.token}")
        assert page.status == 200
        html = await page.text()
        assert 'class="textual-terminal"' in html and f"ws://127.0.0.1:{port}/ws" in html
        urls = set(re.findall(r"""https?://[^\s"')]+""", html)) - {"http://www.w3.org/2000/svg"}  # an XML namespace
        assert urls and all(url.startswith(f"{home}/static/") for url in urls), urls
        for url in urls:  # the script, styles, background and the font are all shipped
            assert (await client.get(url.removeprefix(home))).status == 200, url
        assert "fonts/RobotoMono" in html
        assert (await client.get("/")).status == 200  # the cookie now stands for the token

        evil = await client.get("/ws", headers={"Origin": "http://evil.example", "Upgrade": "websocket",
                                                "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                                                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
        assert evil.status == 403  # another site's page may not drive a chat
        rebound = await client.get("/", headers={"Host": f"evil.example:{port}"})
        assert rebound.status == 403  # DNS rebinding: a foreign name for our address
        local = await client.get("/?token=x", headers={"Host": f"localhost:{port}"}, allow_redirects=False)
        assert local.status == 302 and local.headers["Location"] == f"{home}/?token=x"
    assert f"serving the chat at {home}/?token={server.token}" in capsys.readouterr().out


def error_of(argv, capsys) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    return err


def test_without_textual_serve_the_error_names_the_install_command(monkeypatch, capsys):
    for name in ("textual_serve", "textual_serve.server"):
        monkeypatch.setitem(sys.modules, name, None)  # what `import` sees when it is not installed
    assert "pip install 'chatterm[web]'" in error_of([str(PARROT), "--web"], capsys)


@needs_textual_serve
def test_user_errors_of_web_are_one_line(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind((web.HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert "pick another with --port N" in error_of([str(PARROT), "--web", "--port", str(port)], capsys)
    assert "65535" in error_of([str(PARROT), "--web", "--port", "70000"], capsys)
    assert "--plain" in error_of([str(PARROT), "--web", "--plain"], capsys)
    assert "no such file" in error_of([str(tmp_path / "nothing"), "--web"], capsys)
    assert "--remote-model" in error_of([str(PARROT), "--web", "--remote-model", "x"], capsys)


@pytest.mark.slow
@needs_textual_serve
def test_closing_the_page_ends_its_session_and_ctrl_c_the_server(tmp_path):
    """No browser: a websocket as the page opens it starts a session process; closing it ends that
    process; Ctrl+C then stops the server with exit code 0."""
    import aiohttp

    server, url = web_check.start_server([str(PARROT), "--web", "--port", "0"])
    try:
        async def one_session():
            origin, token = url.split("/?")
            async with aiohttp.ClientSession() as http, http.ws_connect(f"{origin.replace('http', 'ws')}/ws?{token}",
                                                                         headers={"Origin": origin}) as socket_:
                while (await socket_.receive(timeout=60)).type != aiohttp.WSMsgType.BINARY:
                    pass  # the session draws its first frame
                assert len(web_check.group_members(server.pid)) > 1  # the server and its session

        asyncio.run(one_session())
        web_check.wait_for(lambda: web_check.group_members(server.pid) == [server.pid], "the session to end")
        assert web_check.interrupt_server(server) == 0
    finally:
        web_check.stop_process_group(server)
    assert "Traceback" not in "".join(server.output)


@pytest.mark.slow
@needs_textual_serve
@pytest.mark.skipif(web_check.find_chromium() is None,
                    reason="no Chromium: apt-get install chromium-headless-shell (or set CHROMIUM=/path)")
def test_a_chat_in_headless_chromium(tmp_path):
    """The page loads from the server alone, a typed message gets the parrot's reply, the
    session got the server's flags (--context 128 shows in the status bar, --temperature 0 makes
    the reply the parrot's), and Ctrl+C with the page open stops everything."""
    server, url = web_check.start_server([str(PARROT), "--web", "--port", "0", "--temperature", "0",
                                          "--context", "128"])
    codes = []
    try:
        seen = asyncio.run(web_check.chat_in_browser(url, web_check.find_chromium(), "hi", "hello there, friend",
                                                     ready="loaded ",
                                                     while_open=lambda: codes.append(web_check.interrupt_server(server))))
    finally:
        web_check.stop_process_group(server)
    screenshot = tmp_path / "web_chat.png"
    screenshot.write_bytes(seen.screenshot)
    print(f"screenshot: {screenshot}")
    assert web_check.png_size(seen.screenshot) == web_check.WINDOW
    assert "/128" in seen.screen
    assert not web_check.foreign_requests(seen.requested, url)
    assert any(u.startswith("ws://127.0.0.1") for u in seen.requested)
    assert codes == [0]
    assert "Traceback" not in "".join(server.output)
