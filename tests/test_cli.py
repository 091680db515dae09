"""The command line as a user runs it: subprocesses, real files, exit codes."""

import os
import subprocess
import sys

import pytest
import torch

from helpers import tiny_model


def run(*args, stdin="", env=None):
    return subprocess.run(
        [sys.executable, "-m", "chatterm", *args], input=stdin, capture_output=True, text=True, timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.slow
def test_plain_chat_repl_streams_replies_and_runs_commands(parrot_checkpoint, tmp_path):
    script = "hi\n/set temperature 0\n/set tempreture 1\n/nope\nhow are you?\n/export {}\n/quit\nnever read\n".format(
        tmp_path / "chat.md"
    )
    r = run(str(parrot_checkpoint), "--plain", "--temperature", "0", stdin=script)
    assert r.returncode == 0, r.stderr
    assert "hello there, friend" in r.stdout and "very well, thank you" in r.stdout
    assert "User:" not in r.stdout
    assert "did you mean 'temperature'" in r.stderr and "unknown command /nope" in r.stderr
    assert "**User:** how are you?" in (tmp_path / "chat.md").read_text()


@pytest.mark.slow
def test_generate_is_pipe_friendly(parrot_checkpoint):
    r = run("generate", str(parrot_checkpoint), "--prompt", "User: hi\nAssistant:", "--temperature", "0",
            "--max-new-tokens", "12")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(" hello there")
    assert "\x1b" not in r.stdout


@pytest.mark.slow
def test_generate_reads_stdin_and_chat_mode(parrot_checkpoint):
    r = run("generate", str(parrot_checkpoint), "--prompt", "-", "--chat", "--temperature", "0", stdin="hi")
    assert r.returncode == 0 and r.stdout.strip() == "hello there, friend"


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "/no/such/ckpt", "--prompt", "x"], "no such file or folder"),
        (["generate", "{ckpt}", "--prompt", "x", "--top-p", "7"], "top_p: '7' is out of range"),
        (["generate", "{ckpt}", "--prompt", "x", "--dtype", "fp8"], "unknown dtype"),
        (["generate", "{bad}", "--prompt", "x"], "not a PyTorch weights file, or corrupt"),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(args, message, parrot_checkpoint, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x02not a pickle at all")
    args = [a.format(ckpt=parrot_checkpoint, bad=bad) for a in args]
    r = run(*args)
    assert r.returncode == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


@pytest.mark.slow
def test_convert_nanogpt_to_our_format(tmp_path):
    model = tiny_model(seed=0, vocab_size=50304)
    cfg = model.config
    args = dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size, bias=True,
                vocab_size=cfg.vocab_size, dropout=0.0)
    torch.save({"model": model.state_dict(), "model_args": args}, tmp_path / "ckpt.pt")
    r = run("convert", str(tmp_path / "ckpt.pt"), str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "model.safetensors").exists()
    r = run("generate", str(tmp_path / "out"), "--prompt", "Hello", "--max-new-tokens", "5", "--seed", "1")
    assert r.returncode == 0, r.stderr  # GPT-2 tokenizer chosen for a padded 50304 vocabulary


def test_launch_path_imports_neither_torch_nor_tiktoken():
    """The first frame must not wait for torch (about a second to import): the command line and
    the app's module import nothing heavy; the model loads after the first frame."""
    import subprocess
    import sys

    code = ("import sys; from chatterm.cli import build_parser; build_parser(); import chatterm.ui.app; "
            "print(sorted(m for m in ('torch', 'tiktoken') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_first_frame_arrives_on_a_real_terminal():
    from chatterm.bench_ui import _first_frame_once

    assert _first_frame_once(timeout=30) > 0  # raises with the last output if it never draws
