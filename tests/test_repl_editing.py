"""The plain REPL on a real terminal (a pseudo-terminal): arrows edit the line instead of reaching
the model as escape codes, Up recalls earlier lines (across launches), `/edit` puts the last
message back on the line; from a pipe it reads lines as before."""

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PARROT = Path(__file__).parent / "data" / "snapshot_parrot"  # saved: no training in this file
REPLY = b"hello there, friend"
LEFT, UP, ENTER, CTRL_D = b"\x1b[D", b"\x1b[A", b"\r", b"\x04"


class Terminal:
    """`chatterm --plain` on a pseudo-terminal, 80x24: keys in, screen bytes out (polled)."""

    def __init__(self, *args: str) -> None:
        controller, device = pty.openpty()
        import fcntl
        import struct
        import termios

        fcntl.ioctl(device, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chatterm", str(PARROT), "--plain", "--temperature", "0", *args],
            stdin=device, stdout=device, stderr=device, start_new_session=True,
            env={**os.environ, "TERM": "xterm", "INPUTRC": "/dev/null"})
        os.close(device)
        self.fd = controller
        self.output = b""

    def read_until(self, condition, timeout: float = 90.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not condition(self.output):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}; the terminal shows:\n{self.output.decode(errors='replace')}")
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.05))
            if ready:
                try:
                    self.output += os.read(self.fd, 4096)
                except OSError:  # EIO: the program closed the terminal
                    if not condition(self.output):
                        raise AssertionError(f"chatterm ended before {what}:\n{self.output.decode(errors='replace')}")

    def wait_for_prompt(self, count: int) -> None:
        """Until the "> " prompt has been drawn `count` times."""
        self.read_until(lambda out: out.count(b"> ") >= count, what=f"prompt number {count}")

    def type(self, *keys: bytes) -> None:
        for key in keys:
            os.write(self.fd, key)

    def quit(self) -> int:
        """Ctrl+D on an empty line: the exit code."""
        self.type(CTRL_D)
        return self.proc.wait(timeout=60)

    def __enter__(self) -> "Terminal":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:  # a failed test: do not leave it running
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        os.close(self.fd)


@pytest.mark.slow
def test_arrows_edit_the_line_and_history_survives_a_restart():
    with Terminal() as term:
        term.wait_for_prompt(1)
        term.type(b"i", LEFT, b"h", ENTER)  # "i", cursor left, "h": the line is "hi"
        term.read_until(lambda out: REPLY in out, what="the reply to hi")
        term.wait_for_prompt(2)
        term.type(UP, ENTER)  # the line just sent comes back (the parrot, one turn on, says "hello friend")
        term.read_until(lambda out: out.count(b"hello") == 2, what="the reply to the recalled hi")
        term.wait_for_prompt(3)
        assert term.quit() == 0
    assert b"[D" not in term.output and b"[A" not in term.output  # no escape code was echoed as text
    with Terminal() as again:  # a new launch: Up recalls the line typed in the last one
        again.wait_for_prompt(1)
        again.type(UP, ENTER)
        again.read_until(lambda out: REPLY in out, what="the reply to hi, recalled from the history file")
        again.wait_for_prompt(2)
        assert again.quit() == 0


@pytest.mark.slow
def test_edit_puts_the_last_message_back_on_the_line():
    with Terminal() as term:
        term.wait_for_prompt(1)
        term.type(b"how are you?", ENTER)
        term.read_until(lambda out: b"very well, thank you" in out, what="the first reply")
        term.wait_for_prompt(2)
        term.type(b"/edit", ENTER)
        term.read_until(lambda out: out.rstrip().endswith(b"> how are you?"), what="the message back on the line")
        # Edit it in place: before the "?", delete "how are you", type another question.
        term.type(LEFT, b"\x7f" * len(b"how are you"), b"what is your name", ENTER)
        term.read_until(lambda out: b"my name is parrot" in out, what="the reply to the edited message")
        term.wait_for_prompt(4)
        assert term.quit() == 0


@pytest.mark.slow
def test_continue_shows_where_the_chat_left_off():
    from chatterm.session import Conversation, ConversationStore
    from chatterm.session.user.folders import data_dir

    store = ConversationStore(data_dir() / "conversations")
    chat = Conversation()
    for role, text in [("user", "hi"), ("assistant", "hello there, friend"),
                       ("user", "what is your name?"), ("assistant", "my name is \x1b[31mparrot")]:
        chat.add(role, text)
    store.save(chat)
    store.close()
    with Terminal("-c") as term:
        term.wait_for_prompt(2)  # the last exchange ("> what is your name?"), then the prompt
        assert b"> what is your name?\r\nmy name is parrot\r\n" in term.output  # made inert
        assert b"hello there" not in term.output
        assert term.quit() == 0


@pytest.mark.slow
def test_a_pipe_still_reads_plain_lines(tmp_path):
    r = subprocess.run([sys.executable, "-m", "chatterm", str(PARROT), "--plain", "--temperature", "0"],
                       input="hi\n", capture_output=True, text=True, timeout=120, env=os.environ)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello there, friend\n"  # no prompt, no escape codes, the reply and one newline
