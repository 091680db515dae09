"""A model's chat template and tokenizer are strangers' programs (issue 24, classes 1 and 3): what
they fail on is one line, with escapes removed, from `generate` (exit code 2), the REPL and the TUI,
which go on; what they would loop or grow on is bounded. Every model here is a real folder or
file on disk, loaded as a user's would be."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chatterm.cli import main
from chatterm.engine.events import Finished
from chatterm.engine.settings import SamplingSettings
from chatterm.session import ChatSession
from chatterm.session.backends.local import LocalBackend
from chatterm.ui.chat_view import AssistantMessage
from helpers import save_tiny_checkpoint, tiny_model, wait_until
from tiny_llama import CHATML, QWEN25, hf_model, save_hf_folder
from ui_helpers import make_app, notes, ready, settle

SRC = str(Path(__file__).parent.parent / "src")
ESCAPES = "\x1b]0;pwned\x07\x1b]52;c;aGk=\x07\x1b[2J"
# Refuses any message with "bad" in it, in words full of escape sequences; renders ChatML otherwise.
PICKY = ("{% for m in messages %}{% if 'bad' in m.content %}{{ raise_exception('" + ESCAPES + "no bad words') }}"
         "{% endif %}{% endfor %}" + CHATML)
PANIC_TEXT = "a" * 40 + "b"  # the tokenizer below panics on it (Oniguruma's backtracking limit)


@pytest.fixture(scope="module")
def qwen_folder(tmp_path_factory):
    return save_hf_folder(tmp_path_factory.mktemp("qwen") / "m", hf_model("qwen2", seed=3), template=CHATML)


def with_template(folder: Path, where: Path, source: str) -> Path:
    """A copy of the model folder whose chat template is `source` (chat_template.jinja wins)."""
    copy = shutil.copytree(folder, where / "model")
    (copy / "chat_template.jinja").write_text(source)
    return copy


@pytest.fixture(scope="module")
def panicking_folder(qwen_folder, tmp_path_factory):
    """The model with a tokenizer.json whose pre-tokenizer regex makes the Rust core panic on
    PANIC_TEXT (and on nothing a chat template writes)."""
    from tokenizers import Regex, Tokenizer, pre_tokenizers

    copy = shutil.copytree(qwen_folder, tmp_path_factory.mktemp("panic") / "model")
    tok = Tokenizer.from_file(str(copy / "tokenizer.json"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"(a|aa)+$"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.save(str(copy / "tokenizer.json"))
    return copy


def generate(capsys, folder, prompt):
    code = main(["generate", str(folder), "--chat", "--prompt", prompt, "--max-new-tokens", "4", "--temperature", "0"])
    out, err = capsys.readouterr()
    return code, out, err


def one_clean_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert not any(c in err for c in "\x1b\x07\x9b"), repr(err)
    return lines[0]


@pytest.mark.parametrize("source, says", [
    (PICKY, "refused this conversation: no bad words"),
    ("{{ 1/0 }}", "ZeroDivisionError: division by zero"),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "RecursionError"),
    ("{{ 'a' * 10**10 }}", "built a text or list longer than"),
    ("{{ range(10**9) | list }}", "OverflowError"),
], ids=["refusal", "division", "recursion", "huge-string", "huge-range"])
def test_generate_chat_ends_a_template_failure_with_one_line(capsys, qwen_folder, tmp_path, source, says):
    code, out, err = generate(capsys, with_template(qwen_folder, tmp_path, source), "a bad question")
    assert code == 2
    line = one_clean_line(err)
    assert line.startswith("chatterm: error: ") and says in line and "not added" not in line  # no chat here


def test_generate_chat_with_a_qwen25_template_replies(capsys, qwen_folder, tmp_path):
    code, out, err = generate(capsys, with_template(qwen_folder, tmp_path, QWEN25), "Hello there")
    assert (code, err) == (0, "") and out.strip()


def test_a_blank_chat_prompt_is_one_line(capsys, qwen_folder):
    code, out, err = generate(capsys, qwen_folder, "   ")
    assert code == 2 and one_clean_line(err) == "chatterm: error: empty message: type something first"


@pytest.mark.parametrize("template", [["User: {text}"], "User: {text}", {"user": 5}, {"stop": "User:"}])
def test_a_chat_template_of_the_wrong_type_in_chatterm_json_is_one_line(capsys, tmp_path, template):
    folder = save_tiny_checkpoint(tmp_path / "ckpt", tiny_model(seed=0), chat_template=template)
    code, out, err = generate(capsys, folder, "hi")
    assert code == 2 and "bad chat template" in one_clean_line(err)


@pytest.mark.parametrize("chat", [True, False])
def test_a_tokenizer_panic_is_one_line(capsys, panicking_folder, chat):
    code = main(["generate", str(panicking_folder), "--prompt", PANIC_TEXT, "--max-new-tokens", "4"] + ["--chat"] * chat)
    out, err = capsys.readouterr()
    assert code == 2 and "the tokenizer crashed on this text" in one_clean_line(err)


def test_a_message_the_prompt_fails_on_is_taken_back_and_the_next_is_answered(panicking_folder):
    session = ChatSession(LocalBackend.load(panicking_folder), SamplingSettings(temperature=0, max_new_tokens=4))
    with pytest.raises(ValueError, match="tokenizer crashed.*the message was not added"):
        list(session.send(PANIC_TEXT))
    assert session.conversation.turns == []
    events = list(session.send("Hello there"))
    assert isinstance(events[-1], Finished) and [t.role for t in session.conversation.turns] == ["user", "assistant"]


@pytest.mark.slow
def test_the_plain_repl_answers_the_messages_after_one_the_template_refuses(qwen_folder, tmp_path):
    folder = with_template(qwen_folder, tmp_path, PICKY)
    env = {"PYTHONPATH": SRC, "CHATTERM_DATA_DIR": str(tmp_path / "data"), "CHATTERM_CONFIG_DIR": str(tmp_path / "cfg"),
           "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-m", "chatterm", str(folder), "--plain", "--save", "--temperature", "0",
                          "--max-new-tokens", "4"], input=b"a bad question\nHello there\n", capture_output=True,
                         env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert b"\x1b" not in run.stdout + run.stderr and b"\x07" not in run.stdout + run.stderr
    errors = [line for line in run.stderr.decode().splitlines() if "no bad words" in line]
    assert errors == ["the chat template refused this conversation: no bad words; the message was not added to the chat"]
    saved = json.loads(next((tmp_path / "data" / "conversations").glob("*.json")).read_text())["turns"]
    assert [(t["role"], t["text"]) for t in saved][:1] == [("user", "Hello there")] and len(saved) == 2


async def test_the_tui_shows_a_tokenizer_panic_as_one_line_and_answers_the_queued_message(panicking_folder):
    app = make_app(panicking_folder, max_new_tokens=4)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(app, pilot)
        app.send(PANIC_TEXT)
        app.send("Hello there")  # queued: the first reply's worker is running
        assert app.queue.pending
        await settle(app, pilot)
        await wait_until(pilot, lambda: not app.queue.pending and not app.busy, what="the queued message's reply")
        await settle(app, pilot)
        assert app.status.busy == ""
        assert [t.role for t in app.session.conversation.turns] == ["user", "assistant"]
        assert app.session.conversation.turns[0].text == "Hello there"
        assert any("the tokenizer crashed on this text" in n for n in notes(app))
        assert len(app.chat.query(AssistantMessage)) == 1


def test_a_gguf_with_a_megabyte_sentencepiece_token_loads_at_once(tmp_path):
    """Merges were derived from every split of every piece: one piece of 1 MB took minutes."""
    from tiny_llama import write_gguf

    model = hf_model("llama", seed=3)
    pieces = ["▁", *"abcdefghijklmnopqrstuvwxyz", "▁a", "▁b", "ab", "▁ab"]
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *pieces]
    tokens += [f"▁w{i}" for i in range(model.config.vocab_size - len(tokens) - 1)] + ["a" * 1_000_000]
    types = [2, 3, 3] + [6] * 256 + [1] * (len(tokens) - 259)
    path = write_gguf(tmp_path / "sp.gguf", model, metadata={
        "tokenizer.ggml.model": ("llama", "STRING"), "tokenizer.ggml.tokens": (tokens, "ARRAY"),
        "tokenizer.ggml.token_type": (types, "ARRAY"), "tokenizer.ggml.bos_token_id": (1, "UINT32"),
        "tokenizer.ggml.eos_token_id": (2, "UINT32"),
    })
    began = time.monotonic()
    backend = LocalBackend.load(path)
    assert time.monotonic() - began < 10
    assert backend.tokenizer.decode(backend.tokenizer.encode("ab ba")) == " ab ba"
