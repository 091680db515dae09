"""Chat through `chatterm --web` in a real headless Chromium, and save a screenshot.

    python scripts/web_check.py                              # the test parrot; writes web_check.png
    python scripts/web_check.py CHECKPOINT --message "Hello" --expect "" --screenshot shot.png

Starts `chatterm CHECKPOINT --web --port <free> --temperature 0` on 127.0.0.1, opens the page in
Chromium (Debian's `chromium-headless-shell` or `chromium`; `CHROMIUM=/path` picks another),
waits for the model to load, types the message, waits for the expected reply text (any reply
when --expect is empty), saves a screenshot, then stops the server with Ctrl+C (SIGINT) and checks
that it and every session it started have ended. Also checks that the page fetched nothing from
another host (it must work offline). Exit code 0 when all of that held.

tests/test_web.py drives the same functions. The browser is driven over the DevTools protocol
with aiohttp's websocket client (textual-serve depends on aiohttp). The page draws the terminal
on a canvas, so the screen is read from what the browser received: the websocket frames the
server sent, played on a small terminal model (`TerminalScreen`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARROT = ROOT / "tests" / "data" / "snapshot_parrot"  # replies "hello there, friend" to "hi"
BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")
WINDOW = (1200, 800)


def find_chromium() -> str | None:
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


# -- the server --------------------------------------------------------------------------------


def start_server(argv: list[str], env: dict | None = None, timeout: float = 60.0) -> tuple[subprocess.Popen, str]:
    """`chatterm ARGV` (which must include --web) in its own process group; (process, URL) once it
    prints the address it serves. Its output is read on a thread (kept in `proc.output`)."""
    proc = subprocess.Popen([sys.executable, "-m", "chatterm", *argv], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    proc.output = []
    threading.Thread(target=lambda: proc.output.extend(proc.stdout), daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(proc.output):
            if match := re.search(r"serving the chat at (http://\S+)", line):
                return proc, match.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.05)  # polling the output; the deadline bounds it
    stop_process_group(proc)
    raise RuntimeError("the server did not start:\n" + "".join(proc.output))


def interrupt_server(proc: subprocess.Popen, timeout: float = 90.0) -> int:
    """Ctrl+C as a terminal sends it (SIGINT to the whole process group); the exit code, once the
    server and every session it started have ended (RuntimeError if one is left)."""
    os.killpg(proc.pid, signal.SIGINT)
    code = proc.wait(timeout)
    wait_for(lambda: not group_members(proc.pid), "the browser sessions to end with the server", timeout)
    return code


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of a process group, read from Linux's /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _parent, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError):
            continue  # ended while we looked
        if int(group) == pgid and state != "Z":
            members.append(int(stat.parent.name))
    return sorted(members)


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # already gone


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)  # polling; the deadline bounds it


def stop_process_group(proc: subprocess.Popen) -> None:
    """Kill what is left of a process group we started (after a failure)."""
    kill_group(proc.pid)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass


# -- the terminal the page shows ---------------------------------------------------------------


class TerminalScreen:
    """Just enough of a terminal to read what Textual drew: printable text, cursor moves
    (CUP, CUU/CUD/CUF/CUB, CHA), CR/LF; colours and other sequences are skipped."""

    SEQUENCE = re.compile(r"\x1b\[([0-9;?<>=]*)([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[PX^_].*?\x1b\\|\x1b.")

    def __init__(self, width: int = 80, height: int = 24):
        self.width, self.height = width, height
        self.rows = [[" "] * width for _ in range(height)]
        self.x = self.y = 0
        self.pending = ""

    def feed(self, data: bytes | str) -> None:
        text = self.pending + (data.decode("utf-8", "replace") if isinstance(data, bytes) else data)
        self.pending = ""
        last = text.rfind("\x1b")
        if last != -1 and not self.SEQUENCE.match(text, last):  # a sequence cut between frames
            text, self.pending = text[:last], text[last:]
        position = 0
        for match in self.SEQUENCE.finditer(text):
            self._write(text[position:match.start()])
            if match.group(2):
                self._control(match.group(1), match.group(2))
            position = match.end()
        self._write(text[position:])

    def _control(self, params: str, final: str) -> None:
        numbers = [int(p) if p.isdigit() else 0 for p in params.lstrip("?").split(";")]
        first = numbers[0] or 1
        if final in "Hf":
            self.y, self.x = first - 1, (numbers[1] if len(numbers) > 1 and numbers[1] else 1) - 1
        elif final == "A":
            self.y -= first
        elif final == "B":
            self.y += first
        elif final == "C":
            self.x += first
        elif final == "D":
            self.x -= first
        elif final == "G":
            self.x = first - 1
        elif final == "J" and numbers[0] == 2:
            self.rows = [[" "] * self.width for _ in range(self.height)]
        self.x = max(0, min(self.x, self.width - 1))
        self.y = max(0, min(self.y, self.height - 1))

    def _write(self, text: str) -> None:
        for char in text:
            if char == "\r":
                self.x = 0
            elif char == "\n":
                self.y = min(self.y + 1, self.height - 1)
            elif char >= " ":
                if self.x < self.width:
                    self.rows[self.y][self.x] = char
                self.x += 1

    def text(self) -> str:
        return "\n".join("".join(row).rstrip() for row in self.rows)


# -- the browser -------------------------------------------------------------------------------


class DevTools:
    """A Chromium started headless, driven over its DevTools protocol (one page, flat sessions)."""

    def __init__(self, chromium: str):
        self.chromium = chromium
        self.profile = tempfile.TemporaryDirectory(prefix="chatterm-chromium-")
        self.process: subprocess.Popen | None = None
        self.ids = itertools.count(1)
        self.waiting: dict[int, asyncio.Future] = {}
        self.events: list[dict] = []
        self.session_id: str | None = None

    async def start(self, timeout: float = 60.0) -> None:
        import aiohttp

        flags = ["--headless", "--remote-debugging-port=0", f"--user-data-dir={self.profile.name}",
                 f"--window-size={WINDOW[0]},{WINDOW[1]}", "--no-first-run", "--no-default-browser-check",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-gpu", "--disable-dev-shm-usage", "about:blank"]
        if os.geteuid() == 0:
            flags.insert(0, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        self.process = subprocess.Popen([self.chromium, *flags], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True, start_new_session=True)
        address = await asyncio.wait_for(asyncio.to_thread(self._devtools_address), timeout)
        self.http = aiohttp.ClientSession()
        self.socket = await self.http.ws_connect(address, max_msg_size=0)
        self.reader = asyncio.create_task(self._read())
        target = await self.call("Target.createTarget", url="about:blank")
        attached = await self.call("Target.attachToTarget", targetId=target["targetId"], flatten=True)
        self.session_id = attached["sessionId"]

    def _devtools_address(self) -> str:
        seen = []
        for line in self.process.stderr:
            seen.append(line)
            if match := re.search(r"DevTools listening on (ws://\S+)", line):
                return match.group(1)
        raise RuntimeError("Chromium did not start:\n" + "".join(seen[-20:]))

    async def _read(self) -> None:
        async for message in self.socket:
            data = message.json()
            if "id" in data and data["id"] in self.waiting:
                self.waiting.pop(data["id"]).set_result(data)
            elif "method" in data:
                self.events.append(data)

    async def call(self, method: str, **params) -> dict:
        ident = next(self.ids)
        future = asyncio.get_running_loop().create_future()
        self.waiting[ident] = future
        message = {"id": ident, "method": method, "params": params}
        if self.session_id:
            message["sessionId"] = self.session_id
        await self.socket.send_json(message)
        reply = await asyncio.wait_for(future, 60)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def close(self) -> None:
        """Browser.close first, so that Chromium ends (and reaps) its helper processes itself;
        then kill whatever is left of its process group."""
        if getattr(self, "socket", None) and not self.socket.closed:
            self.session_id = None
            try:
                await self.socket.send_json({"id": next(self.ids), "method": "Browser.close"})
                await asyncio.wait_for(asyncio.to_thread(self.process.wait), 10)
            except (asyncio.TimeoutError, ConnectionError):
                pass
        if getattr(self, "reader", None):
            self.reader.cancel()
        for connection in (getattr(self, "socket", None), getattr(self, "http", None)):
            if connection:
                await connection.close()
        if self.process:
            kill_group(self.process.pid)
            self.process.wait(10)
            self.process.stderr.close()
        self.profile.cleanup()


@dataclass
class BrowserChat:
    """What the browser saw: the screen at the end, every URL it requested, the screenshot."""

    screen: str = ""
    requested: list[str] = field(default_factory=list)
    screenshot: bytes = b""


async def chat_in_browser(url: str, chromium: str, message: str, expect: str, ready: str,
                          while_open=None, timeout: float = 120.0) -> BrowserChat:
    """Open `url`, wait until the screen shows `ready`, type `message` and Enter, wait until the
    screen shows `expect` (or, when empty, changes after sending), take a screenshot, and call
    `while_open()` (on a thread) before the browser closes."""
    browser = DevTools(chromium)
    result = BrowserChat()
    screen = TerminalScreen(200, 60)
    seen_frames = 0

    def screen_now() -> str:
        nonlocal seen_frames
        for event in browser.events[seen_frames:]:
            if event["method"] == "Network.webSocketFrameReceived":
                frame = event["params"]["response"]
                if frame["opcode"] == 2:  # the terminal's bytes; text frames are control messages
                    screen.feed(base64.b64decode(frame["payloadData"]))
            elif event["method"] == "Network.requestWillBeSent":
                result.requested.append(event["params"]["request"]["url"])
            elif event["method"] == "Network.webSocketCreated":
                result.requested.append(event["params"]["url"])
        seen_frames = len(browser.events)
        return screen.text()

    async def until(condition, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; the screen:\n{screen_now()}")
            await asyncio.sleep(0.05)  # polling the browser's events

    try:
        await browser.start()
        await browser.call("Network.enable")
        await browser.call("Page.enable")
        await browser.call("Page.navigate", url=url)
        await until(lambda: ready in screen_now(), f"{ready!r} on the screen")
        await browser.call("Runtime.evaluate", expression="document.querySelector('.xterm-helper-textarea').focus()")
        before = screen_now()
        await browser.call("Input.insertText", text=message)
        for kind in ("keyDown", "keyUp"):
            await browser.call("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter",
                               windowsVirtualKeyCode=13, **({"text": "\r"} if kind == "keyDown" else {}))
        if expect:
            await until(lambda: expect in screen_now(), f"the reply {expect!r}")
        else:
            await until(lambda: message in screen_now() and screen_now() != before, "a reply")
        shot = await browser.call("Page.captureScreenshot", format="png")
        result.screenshot = base64.b64decode(shot["data"])
        result.screen = screen_now()
        if while_open:
            await asyncio.to_thread(while_open)
        return result
    finally:
        await browser.close()


def foreign_requests(requested: list[str], url: str) -> list[str]:
    """The URLs the page fetched from anywhere but the server itself."""
    own = url.split("://", 1)[1].split("/", 1)[0]
    return [u for u in requested if u.split("://", 1)[-1].split("/", 1)[0] != own and not u.startswith("data:")]


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG; ValueError if `data` is not one."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", default=str(PARROT))
    parser.add_argument("--message", default="hi")
    parser.add_argument("--expect", default="hello there, friend", help="reply text to wait for ('' for any)")
    parser.add_argument("--screenshot", default="web_check.png")
    args = parser.parse_args()
    chromium = find_chromium()
    if not chromium:
        print("no Chromium found: apt-get install chromium-headless-shell (or set CHROMIUM=/path)", file=sys.stderr)
        return 2
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    with tempfile.TemporaryDirectory(prefix="chatterm-web-check-") as home:
        env.update(CHATTERM_CONFIG_DIR=f"{home}/config", CHATTERM_DATA_DIR=f"{home}/data")  # never the real chats
        server, url = start_server([args.checkpoint, "--web", "--port", "0", "--temperature", "0"], env)
        try:
            codes = []  # Ctrl+C with the page still open, as a user would stop it
            seen = asyncio.run(chat_in_browser(url, chromium, args.message, args.expect, ready="loaded ",
                                               while_open=lambda: codes.append(interrupt_server(server))))
            Path(args.screenshot).write_bytes(seen.screenshot)
            print(seen.screen.rstrip())
            print(f"screenshot: {args.screenshot} {png_size(seen.screenshot)}")
            print(f"server stopped by Ctrl+C with exit code {codes[0]}; its output:")
            print("".join(server.output).rstrip())
            if foreign := foreign_requests(seen.requested, url):
                print(f"FAIL: the page fetched from elsewhere: {foreign}", file=sys.stderr)
                return 1
            if "Traceback" in "".join(server.output) or codes[0] != 0:
                print("FAIL: the server did not stop cleanly", file=sys.stderr)
                return 1
            return 0
        finally:
            stop_process_group(server)


if __name__ == "__main__":
    sys.exit(main())
