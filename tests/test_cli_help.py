"""`--help` says what every flag does and its default; `generate` prints the text, then exactly one
newline, the same on a terminal and through a pipe."""

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

from chatterm.bench import SECTIONS
from chatterm.engine.settings import SPECS

PARROT = Path(__file__).parent / "data" / "snapshot_parrot"  # saved: no training in this file


def run_help(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "chatterm", *args, "--help"], capture_output=True, text=True,
                       timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    return r.stdout


def flag_lines(text: str) -> dict[str, str]:
    """{'--flag': its help text} for every option of a help page (at 200 columns, the help of a long
    flag starts on the next line, and ends before the next flag or a blank line)."""
    flags, current = {}, None
    for line in text.splitlines():
        m = re.match(r"\s+(?:-\w, )?(--[\w-]+)(?: [A-Z_]+| \{[^}]*\})?(?:\s{2,}(.*))?$", line)
        if m:
            current = m.group(1)
            flags[current] = m.group(2) or ""
        elif current and line.strip():
            flags[current] = (flags[current] + " " + line.strip()).strip()
        else:
            current = None
    return flags


def test_top_level_help_shows_the_chat_form_and_plain():
    text = run_help()
    assert "chatterm [MODEL]" in text and "--plain" in text and "--continue" in text and "--resume" in text
    assert "http(s)://" in text  # a server's address works in place of a checkpoint


def test_every_sampling_flag_has_help_and_its_default():
    for command in ("chat", "generate"):
        flags = flag_lines(run_help(command))
        for spec in SPECS.values():
            assert flags.get(spec.flag), f"{command} {spec.flag} has no help"
            assert "built-in:" in flags[spec.flag], f"{command} {spec.flag} does not say its default"


def test_every_train_flag_has_help_with_its_default():
    flags = flag_lines(run_help("train"))
    assert len(flags) > 15
    for flag, text in flags.items():
        if flag == "--help":
            continue
        assert text and "(default: " in text, f"train {flag} has no help or no default"


def test_bench_sections_lists_the_section_names():
    flags = flag_lines(run_help("bench"))
    assert all(name in flags["--sections"] for name in SECTIONS)
    assert all(flags[f] for f in flags), [f for f in flags if not flags[f]]


# -- generate's output ----------------------------------------------------------------------------


def generate(checkpoint, *args: str, terminal: bool) -> bytes:
    """stdout of `chatterm generate`, through a pipe or a pseudo-terminal (raw bytes, unchanged)."""
    argv = [sys.executable, "-m", "chatterm", "generate", str(checkpoint), "--temperature", "0", *args]
    if not terminal:
        r = subprocess.run(argv, capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stdout
    controller, device = pty.openpty()
    import termios

    attrs = termios.tcgetattr(device)
    attrs[1] &= ~termios.ONLCR  # no "\n" -> "\r\n" translation: we compare the bytes written
    termios.tcsetattr(device, termios.TCSANOW, attrs)
    proc = subprocess.Popen(argv, stdout=device, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    os.close(device)
    out = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(controller)
    assert proc.wait(timeout=120) == 0
    return out


@pytest.mark.slow
@pytest.mark.parametrize("terminal", [False, True], ids=["pipe", "terminal"])
def test_generate_chat_reply_is_the_text_then_one_newline(terminal):
    out = generate(PARROT, "--chat", "--prompt", "hi", terminal=terminal)
    assert out == b"hello there, friend\n"


@pytest.mark.slow
@pytest.mark.parametrize("terminal", [False, True], ids=["pipe", "terminal"])
def test_generate_completion_keeps_its_leading_space_and_ends_with_one_newline(terminal):
    # The parrot says " hello there, friend\nUser:" here: the stop string ends it, the newline before it goes.
    out = generate(PARROT, "--prompt", "User: hi\nAssistant:", "--stop", "User:", "--max-new-tokens", "40",
                   terminal=terminal)
    assert out == b" hello there, friend\n"
