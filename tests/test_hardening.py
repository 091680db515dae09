"""Hostile files, bad input, faults: each case from the hardening issue, on real files and models."""

import io
import json
import os
import pickle
import signal
import subprocess
import sys

import pytest
import torch

from chatterm.engine.settings import SamplingSettings
from chatterm.model import CheckpointError, load_checkpoint, save_checkpoint
from chatterm.repl import PlainChat
from chatterm.session import ChatSession, Conversation, clean_message
from chatterm.session.backends.local import LocalBackend
from chatterm.session.sanitize import printable
from helpers import byte_tokenizer_spec, poll_until, save_tiny_checkpoint, tiny_model, train_parrot

MARKER = "/tmp/chatterm-pwned-marker"


class Payload:
    """Unpickling this would run code (create a marker file)."""

    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


@pytest.fixture
def no_marker():
    if os.path.exists(MARKER):
        os.unlink(MARKER)
    yield
    assert not os.path.exists(MARKER), "code in a checkpoint ran"


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump", "nanogpt-dict"])
def test_pickle_with_code_is_refused_and_never_runs(tmp_path, no_marker, how):
    path = tmp_path / "evil.pt"
    if how == "torch.save":
        torch.save({"model": Payload()}, path)
    elif how == "pickle.dump":
        with open(path, "wb") as f:
            pickle.dump({"w": Payload()}, f)
    else:
        sd = tiny_model().state_dict()
        torch.save({"model": sd, "model_args": {"n_layer": 2}, "config": Payload()}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    if how != "pickle.dump":
        assert "refused" in str(err.value) and "posix.system" in str(err.value)


def _saved(tmp_path, **meta):
    folder = tmp_path / "m"
    save_checkpoint(folder, tiny_model(), {"tokenizer": byte_tokenizer_spec(), **meta})
    return folder


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:1000]), "corrupt or truncated"),
        (lambda f: (f / "model.safetensors").unlink(), "weights file is missing"),
        (lambda f: (f / "chatterm.json").write_text("{not json"), "not valid JSON"),
        (lambda f: _edit_meta(f, lambda m: m["model"].update(n_embd=128, n_head=2)), "has shape"),
        (lambda f: _edit_meta(f, lambda m: m["model"].update(n_layer=3)), "missing"),
        (lambda f: _edit_meta(f, lambda m: m["model"].update(n_layer=1)), "unexpected tensor"),
        (lambda f: _edit_meta(f, lambda m: m["model"].update(n_head=3)), "divisible"),
        (lambda f: _edit_meta(f, lambda m: m.pop("model")), "model config is missing"),
    ],
)
def test_broken_checkpoints_give_one_line_naming_the_file(tmp_path, damage, message):
    folder = _saved(tmp_path)
    damage(folder)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(folder)
    text = str(err.value)
    assert message in text and str(folder) in text and "\n" not in text


def _edit_meta(folder, change):
    meta = json.loads((folder / "chatterm.json").read_text())
    change(meta)
    (folder / "chatterm.json").write_text(json.dumps(meta))


def test_tokenizer_larger_than_embedding_is_refused(tmp_path):
    folder = tmp_path / "m"
    save_checkpoint(folder, tiny_model(vocab_size=200), {"tokenizer": byte_tokenizer_spec()})  # needs 268 rows
    with pytest.raises(CheckpointError, match="tokenizer has 268 tokens but the model's embedding only 200"):
        LocalBackend.load(folder)


def test_folder_without_a_model_and_wrong_path(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(CheckpointError, match="no model found in this folder"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no such file or folder"):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize("name, value", [
    ("temperature", "abc"), ("temperature", "nan"), ("temperature", "inf"), ("temperature", "-1"),
    ("top_k", "-5"), ("top_k", "2.5"), ("top_p", "1.5"), ("min_p", "-0.1"), ("repetition_penalty", "0"),
    ("max_new_tokens", "0"), ("max_new_tokens", "1e12"), ("seed", "-3"), ("seed", "x"),
])
def test_absurd_settings_are_refused_with_the_allowed_range(name, value):
    s = SamplingSettings()
    before = s.to_dict()
    with pytest.raises(ValueError, match=f"^{name}: .*(from .* to|number)"):
        s.set(name, value)
    assert s.to_dict() == before  # the previous value stays


def test_unknown_setting_suggests_the_nearest():
    with pytest.raises(ValueError, match="did you mean 'top_p'"):
        SamplingSettings().set("topp", "0.5")


def test_input_edge_cases_reach_the_model_safely(parrot_checkpoint):
    session = ChatSession(LocalBackend.load(parrot_checkpoint), SamplingSettings(temperature=0, max_new_tokens=8))
    for bad in ("", "   \n\t "):
        with pytest.raises(ValueError, match="empty message"):
            list(session.send(bad))
    assert clean_message("a\x00b\x1b[2Jc\x07") == "ab[2Jc"
    for text in ("مرحبا بالعالم", "😀🎉 émoji", "x" * 100_000):  # right-to-left, emoji, a 100 KB paste
        done = list(session.send(text))[-1]
        assert done.error is None and done.prompt_tokens < 256
    assert session.conversation.turns[-2].text == "x" * 100_000  # the paste is kept whole in history
    with pytest.raises(ValueError, match="too long"):
        list(session.send("y" * 300_000))


@pytest.mark.slow
def test_model_output_with_escape_sequences_is_made_inert(tmp_path):
    hostile = "User: hi\nAssistant: \x1b]52;c;cHdu\x07red \x1b[31mtext\x1b[0m\x1b[2J done\n"
    model, _ = train_parrot(steps=300, text=hostile)
    ckpt = save_tiny_checkpoint(tmp_path / "hostile", model)
    r = subprocess.run([sys.executable, "-m", "chatterm", str(ckpt), "--plain", "--temperature", "0"],
                       input="hi\n", capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "red" in r.stdout and "\x1b" not in r.stdout and "\x07" not in r.stdout
    assert printable("a\x1b[31mb\x9b2Jc\x1bPq#0\x1b\\d") == "abcd"


def test_out_of_memory_ends_the_reply_with_a_message_and_the_session_lives(parrot_checkpoint):
    backend = LocalBackend.load(parrot_checkpoint)
    session = ChatSession(backend, SamplingSettings(temperature=0))
    calls = []

    def explode(module, args, output):  # fault injection on the real model: the third step fails
        calls.append(1)
        if len(calls) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    hook = backend.generator.model.transformer.h[0].register_forward_hook(explode)
    done = list(session.send("hi"))[-1]
    hook.remove()
    assert done.stop_reason == "error" and "ran out of memory" in done.error
    assert session.conversation.turns[-1].note.startswith("error:")
    again = list(session.send("how are you?"))[-1]
    assert again.error is None and again.text.strip() == "very well, thank you"


def test_autosave_survives_kill_at_any_moment(tmp_path):
    """A chat autosaved again and again as it grows is killed with SIGKILL in the middle of its
    saves, early and late (bigger files); its file is always a whole conversation."""
    writer = (
        "import sys; from chatterm.session import Conversation, ConversationStore\n"
        "store, c = ConversationStore(sys.argv[1]), Conversation()\n"
        "for i in range(100000):\n"
        "    c.add('user', 'message %d ' % i + 'x' * 2000)\n"
        "    store.save(c)\n"
    )
    for saves in (1, 5, 20, 60):
        folder = tmp_path / f"chats-{saves}"
        proc = subprocess.Popen([sys.executable, "-c", writer, str(folder)])
        try:
            poll_until(lambda: _saved_turns(folder) >= saves, timeout=60, what=f"{saves} saves in {folder.name}")
            assert proc.poll() is None  # still saving: the kill lands among its writes
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert _saved_turns(folder) >= saves  # never half a file, nor an older one
        leftovers = [p for p in folder.iterdir() if p.suffix != ".json" and p.name != ".locks"]
        assert all(p.name.endswith(".tmp") for p in leftovers)  # at most a stray temp file


def _saved_turns(folder) -> int:
    """The turns in the one chat autosaved in `folder` (0 before its first save); a broken file
    fails the test."""
    saved = list(folder.glob("*.json")) if folder.is_dir() else []
    assert len(saved) <= 1, saved
    return len(Conversation.from_dict(json.loads(saved[0].read_text())).turns) if saved else 0


class _CtrlCTwiceInAFinalizer(io.StringIO):
    """Standard output whose first write runs the SIGINT handler twice inside a finalizer, as
    two Ctrl+C presses that Python handles while it frees an object: the second press's
    KeyboardInterrupt is printed as "Exception ignored", not raised."""

    def write(self, text):
        if not self.getvalue():
            class Freed:
                def __del__(self):
                    handler = signal.getsignal(signal.SIGINT)
                    handler(signal.SIGINT, None)
                    handler(signal.SIGINT, None)

            Freed()
        return super().write(text)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the point of it
def test_a_second_ctrl_c_lost_in_a_finalizer_still_quits(tmp_path):
    backend = LocalBackend.load(save_tiny_checkpoint(tmp_path / "babbler", tiny_model(seed=0)))
    session = ChatSession(backend, SamplingSettings(max_new_tokens=100000, seed=1))
    chat = PlainChat(session, out=_CtrlCTwiceInAFinalizer(), err=io.StringIO())
    try:
        with pytest.raises(KeyboardInterrupt):
            chat.run(["talk forever\n", "never sent\n"])
    finally:
        session.close()
    assert [t.role for t in session.conversation.turns] == ["user", "assistant"]
    assert session.conversation.turns[-1].stopped


@pytest.mark.slow
def test_ctrl_c_stops_the_reply_then_quits(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "babbler", tiny_model(seed=0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatterm", str(ckpt), "--plain", "--max-new-tokens", "100000", "--seed", "1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},  # SIGABRT prints where each thread is
    )
    proc.stdin.write("talk forever\n")
    proc.stdin.flush()
    proc.stdout.read(20)  # the reply is streaming
    proc.send_signal(signal.SIGINT)
    line = proc.stderr.readline()
    assert "(stopped)" in line
    proc.send_signal(signal.SIGINT)  # at the prompt, or still in the reply's last steps: quit
    try:
        assert proc.wait(timeout=30) == 130
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        pytest.fail("the second Ctrl+C did not quit; where it waited:\n" + proc.communicate()[1][-3000:])
