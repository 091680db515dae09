"""Terminals: no text from a file or a model reaches the terminal raw, and faults of the
surroundings (bad input, closed streams, a reader gone early, SIGTERM, SIGHUP) end nothing badly.
Every test runs the real program (`python -m chatterm`) in a subprocess and polls, never sleeps."""

import errno
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import byte_tokenizer_spec, save_tiny_checkpoint, tiny_model

SRC = str(Path(__file__).parent.parent / "src")
ESCAPE_NAME = "evil\x1b]0;pwned\x07\x1b[2Jname"


@pytest.fixture(scope="module")
def hostile_checkpoint(tmp_path_factory):
    """A random model whose tokenizer has whole escape sequences as tokens (and the ESC and BEL
    bytes), so its replies are full of them; its name holds some too. No training needed."""
    from chatterm.engine.tokenizer import Tokenizer

    ranks = [bytes([i]) for i in range(256)] + [b"\x1b[31m", b"\x1b]52;c;cHdu\x07", b"\x1b[2J", b"\x1b]0;pwned\x07"]
    spec = Tokenizer.bpe_spec(ranks, {}, name="hostile")
    folder = tmp_path_factory.mktemp("hostile") / "h"
    return save_tiny_checkpoint(folder, tiny_model(seed=0, vocab_size=260), spec, name=ESCAPE_NAME)


@pytest.fixture(scope="module")
def babbler(tmp_path_factory):
    """Never says "User:" and has no end-of-text token: its replies run until stopped."""
    folder = tmp_path_factory.mktemp("babbler") / "b"
    return save_tiny_checkpoint(folder, tiny_model(seed=0), byte_tokenizer_spec(eot=False), name="babbler")


def _env(tmp_path):
    return {**os.environ, "PYTHONPATH": SRC, "CHATTERM_DATA_DIR": str(tmp_path / "data"),
            "CHATTERM_CONFIG_DIR": str(tmp_path / "config")}


def _chatterm(tmp_path, *args, input=b"", **kwargs):
    return subprocess.run([sys.executable, "-m", "chatterm", *map(str, args)], input=input, capture_output=True,
                          env=_env(tmp_path), timeout=120, **kwargs)


def _saved_turns(tmp_path):
    files = list((tmp_path / "data" / "conversations").glob("*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())["turns"]


def _no_escapes(data: bytes):
    """No ESC, BEL or C1 CSI character. As characters, not bytes: 0x9b is also a UTF-8 continuation
    byte of ordinary letters (U+011B "ě" is c4 9b), which a UTF-8 terminal never reads as CSI."""
    text = data.decode("utf-8", errors="replace")
    assert "\x1b" not in text and "\x07" not in text and "\x9b" not in text, data[-300:]


@pytest.mark.slow
def test_generate_makes_model_text_inert_unless_raw(tmp_path, hostile_checkpoint):
    args = ("generate", hostile_checkpoint, "--prompt", "hi", "--temperature", "1", "--seed", "1",
            "--max-new-tokens", "300")
    inert = _chatterm(tmp_path, *args)
    assert inert.returncode == 0 and len(inert.stdout) > 100
    _no_escapes(inert.stdout + inert.stderr)
    raw = _chatterm(tmp_path, *args, "--raw")
    assert raw.returncode == 0 and raw.stdout.count(b"\x1b") > 3, raw.stdout


@pytest.mark.slow
def test_names_and_paths_in_messages_are_inert(tmp_path, hostile_checkpoint, parrot_checkpoint):
    bad_path = tmp_path / "no\x1b[2Jsuch\x07.pt"
    r = _chatterm(tmp_path, "generate", bad_path, "--prompt", "x")
    assert r.returncode == 2 and b"/nosuch.pt: no such file" in r.stderr  # the escapes are gone
    _no_escapes(r.stderr)
    r = _chatterm(tmp_path, parrot_checkpoint, "--plain", input=f"/model {hostile_checkpoint}\n/model {bad_path}\n".encode())
    assert r.returncode == 0 and b"loaded evilname\n" in r.stderr, r.stderr
    _no_escapes(r.stderr)


@pytest.mark.slow
def test_a_bad_recommendation_from_a_hostile_checkpoint_is_an_inert_warning(tmp_path):
    folder = save_tiny_checkpoint(tmp_path / "rec", tiny_model(seed=0), name=ESCAPE_NAME, sampling={"top_p": "\x1b[2J"})
    r = _chatterm(tmp_path, "generate", folder, "--prompt", "x", "--max-new-tokens", "2")
    assert r.returncode == 0 and b"chatterm: warning: evilname's recommended sampling: " in r.stderr, r.stderr
    _no_escapes(r.stderr)


@pytest.mark.slow
def test_a_bad_model_path_in_plain_mode_keeps_the_session_and_the_model(tmp_path, parrot_checkpoint):
    notes = tmp_path / "notes.pt"
    notes.write_text("not a model")
    r = _chatterm(tmp_path, parrot_checkpoint, "--plain", "--save", "--temperature", "0",
                  input=f"hi\n/model {tmp_path / 'missing.pt'}\n/model {notes}\nhow are you?\n".encode())
    assert r.returncode == 0, r.stderr
    assert b"Traceback" not in r.stderr
    errors = [line for line in r.stderr.decode().splitlines() if "still using parrot" in line]
    assert len(errors) == 2 and "no such file or folder" in errors[0] and "notes.pt" in errors[1]
    assert r.stdout.decode().split() == "hello there, friend very well, thank you".split()
    assert [t["text"] for t in _saved_turns(tmp_path)] == ["hi", "hello there, friend", "how are you?", "very well, thank you"]


@pytest.mark.slow
def test_invalid_utf8_and_control_only_messages(tmp_path, parrot_checkpoint):
    r = _chatterm(tmp_path, parrot_checkpoint, "--plain", "--save", "--temperature", "0",
                  input=b"\x01\x02\x1b\x7f\nhi\xff\xfe\n\x80\x81\n")
    assert r.returncode == 0 and b"Traceback" not in r.stderr, r.stderr
    assert b"empty message: only control characters" in r.stderr
    turns = _saved_turns(tmp_path)
    assert turns[0]["text"] == "hi\ufffd\ufffd" and turns[2]["text"] == "\ufffd\ufffd"
    g = _chatterm(tmp_path, "generate", parrot_checkpoint, "--prompt", "-", "--max-new-tokens", "5", input=b"\xff\xfehi")
    assert g.returncode == 0 and b"Traceback" not in g.stderr, g.stderr


@pytest.mark.slow
@pytest.mark.parametrize("closed", [0, 1])
def test_closed_stdin_or_stdout(tmp_path, parrot_checkpoint, closed):
    for args in ((parrot_checkpoint, "--plain"), ("generate", parrot_checkpoint, "--prompt", "hi", "--max-new-tokens", "5")):
        r = subprocess.run([sys.executable, "-m", "chatterm", *map(str, args)], capture_output=closed != 1,
                           stderr=subprocess.PIPE if closed == 1 else None, env=_env(tmp_path), timeout=120,
                           preexec_fn=lambda: os.close(closed), **({"stdin": subprocess.DEVNULL} if closed else {}))
        assert r.returncode == 0 and b"Traceback" not in r.stderr and b"Error" not in r.stderr, r.stderr


def _read_some(stream, n):
    data = b""
    while len(data) < n:
        chunk = os.read(stream.fileno(), n - len(data))
        assert chunk, "the reply ended before it was cut"
        data += chunk
    return data


@pytest.mark.slow
def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path, babbler):
    """`chatterm generate ... | head -c 1`, and the same for a plain chat: exit code 141, nothing on
    stderr, and the chat's partial reply is saved, marked "stopped"."""
    for args, stdin in ((("generate", babbler, "--prompt", "hi", "--max-new-tokens", "100000"), None),
                        ((babbler, "--plain", "--save", "--max-new-tokens", "100000"), b"talk forever\n")):
        proc = subprocess.Popen([sys.executable, "-m", "chatterm", *map(str, args)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(tmp_path))
        if stdin:
            proc.stdin.write(stdin)
        proc.stdin.close()
        _read_some(proc.stdout, 1)
        proc.stdout.close()  # like `head -c 1` exiting
        assert proc.wait(timeout=60) == 141
        assert proc.stderr.read() == b""
    turns = _saved_turns(tmp_path)
    assert turns[-1]["role"] == "assistant" and turns[-1]["stopped"] and turns[-1]["note"] == "stopped"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_in_plain_mode_save_the_partial_reply(tmp_path, babbler, sig):
    proc = subprocess.Popen([sys.executable, "-m", "chatterm", str(babbler), "--plain", "--save", "--max-new-tokens", "100000"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(tmp_path))
    proc.stdin.write(b"talk forever\n")
    proc.stdin.flush()
    _read_some(proc.stdout, 20)  # the reply is streaming
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == 128 + sig
    err = proc.stderr.read()
    assert b"Traceback" not in err and b"(stopped)" in err
    turns = _saved_turns(tmp_path)
    assert [t["role"] for t in turns] == ["user", "assistant"] and turns[1]["note"] == "stopped" and turns[1]["text"]


@pytest.mark.slow
def test_sigterm_at_the_prompt_quits_quietly(tmp_path, parrot_checkpoint):
    proc = subprocess.Popen([sys.executable, "-m", "chatterm", str(parrot_checkpoint), "--plain", "--save", "--temperature", "0"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(tmp_path))
    proc.stdin.write(b"hi\n")
    proc.stdin.flush()
    assert _read_some(proc.stdout, len(b"hello there, friend\n")) == b"hello there, friend\n"  # shown as saved
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    assert b"Traceback" not in proc.stderr.read()
    assert [t["text"] for t in _saved_turns(tmp_path)] == ["hi", "hello there, friend"]


def _pty_read_until(fd, proc, done, timeout=90):
    """Read the terminal's output until `done(output)` or the program ends."""
    output, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline and not done(output):
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError as e:  # EIO: the program closed the terminal
                if e.errno != errno.EIO:
                    raise
                break
            if not chunk:
                break
            output += chunk
        elif proc.poll() is not None:
            break
    return output


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_in_the_tui_restore_the_terminal_and_save_the_partial_reply(tmp_path, babbler, sig):
    controller, terminal = pty.openpty()
    env = {**_env(tmp_path), "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "30"}
    proc = subprocess.Popen([sys.executable, "-m", "chatterm", str(babbler), "--max-new-tokens", "100000"],
                            stdin=terminal, stdout=terminal, stderr=terminal, env=env, start_new_session=True)
    os.close(terminal)
    try:
        _pty_read_until(controller, proc, lambda out: b"loaded" in out)  # the model's note is on screen
        os.write(controller, b"talk forever\r")
        started = _pty_read_until(controller, proc, lambda out: b"Esc stops" in out)  # the status bar says so
        assert b"Esc stops" in started, started[-500:]
        _pty_read_until(controller, proc, lambda out: len(out) > 3000)  # a few screen updates later
        proc.send_signal(sig)
        output = _pty_read_until(controller, proc, lambda out: False, timeout=60)
        assert proc.wait(timeout=30) == 128 + sig, output[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(controller)
    tail = output[-3000:]
    assert b"Traceback" not in output
    assert b"\x1b[?1049l" in tail and b"\x1b[?1000l" in tail  # alternate screen and mouse tracking off
    turns = _saved_turns(tmp_path)
    assert [t["role"] for t in turns] == ["user", "assistant"] and turns[1]["note"] == "stopped"
