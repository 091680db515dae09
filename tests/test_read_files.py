"""`/read PATH...`: text files attached to the next message, in the plain REPL and the TUI."""

from __future__ import annotations

import json

import pytest
from test_commands import make_repl

from chatterm.session.attachments import MAX_FILE_BYTES, Attachment, fenced
from chatterm.session.backends.local import LocalBackend


@pytest.fixture
def repl(tmp_path, parrot_checkpoint):
    return make_repl(LocalBackend.load(parrot_checkpoint), tmp_path, max_new_tokens=4)


def test_globbed_files_go_fenced_into_the_next_message_and_are_saved(repl, tmp_path, monkeypatch):
    chat, out, err = repl
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("print('a')\n")
    (tmp_path / "src" / "b.py").write_text("x = 1")
    monkeypatch.chdir(tmp_path)
    chat.run(["/read src/*.py\n"])
    lines = err.getvalue().splitlines()
    assert lines[0].startswith("attached src/a.py (11 bytes, ") and lines[0].endswith(" tokens)")
    assert lines[1].startswith("attached src/b.py (5 bytes, ")
    chat.run(["/read\n"])
    assert err.getvalue().splitlines()[-1] == "attached to your next message: src/a.py (11 bytes), src/b.py (5 bytes)"
    chat.run(["what do these do?\n"])
    sent = chat.session.conversation.turns[0].text
    assert sent == "what do these do?\n\n```src/a.py\nprint('a')\n```\n\n```src/b.py\nx = 1\n```"
    assert chat.session.attachments == []  # used once
    saved = json.loads(next((tmp_path / "conversations").glob("*.json")).read_text())
    assert saved["turns"][0]["text"] == sent


def test_binary_missing_and_oversized_files_are_refused_with_one_line_each(repl, tmp_path):
    chat, out, err = repl
    (tmp_path / "blob.bin").write_bytes(b"\x89PNG\0\0\0")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    (tmp_path / "big.txt").write_text("x" * (MAX_FILE_BYTES + 1))
    (tmp_path / "ok.txt").write_text("fine")
    chat.run([f"/read {tmp_path}/blob.bin {tmp_path}/latin1.txt {tmp_path}/big.txt {tmp_path}/nope.txt "
              f"{tmp_path}/*.zip {tmp_path} {tmp_path}/ok.txt\n"])
    lines = err.getvalue().splitlines()
    assert lines == [
        f"{tmp_path}/blob.bin: a binary file, not text; not attached",
        f"{tmp_path}/latin1.txt: not UTF-8 text (a binary file?); not attached",
        f"{tmp_path}/big.txt: larger than {MAX_FILE_BYTES:,} bytes, the most a file attached to a message may be; "
        "not attached",
        f"{tmp_path}/nope.txt: no such file",
        f"{tmp_path}/*.zip: no file matches",
        f"{tmp_path}: is a folder, not a regular file; not attached",
        lines[-1],
    ]
    assert lines[-1].startswith(f"attached {tmp_path}/ok.txt (4 bytes, ")
    assert [a.text for a in chat.session.attachments] == ["fine"]
    chat.run(["/read clear\n"])
    assert chat.session.attachments == [] and err.getvalue().splitlines()[-1] == "dropped 1 attached files"


def test_escape_sequences_in_a_file_never_reach_the_terminal_or_the_model(repl, tmp_path):
    chat, out, err = repl
    (tmp_path / "evil.txt").write_text("hi\x1b]52;c;cHduZWQ=\x07 there\x1b[2J\n")
    chat.run([f"/read {tmp_path}/evil.txt\n", "look\n"])
    assert "\x1b" not in err.getvalue() + out.getvalue()
    assert "\x1b" not in chat.session.conversation.turns[0].text and "hi" in chat.session.conversation.turns[0].text


def test_a_file_too_big_for_the_context_warns_and_can_still_be_sent(repl, tmp_path):
    chat, out, err = repl
    (tmp_path / "long.txt").write_text("word " * 600)  # 3,000 bytes: far more than the parrot's 256 tokens
    chat.run([f"/read {tmp_path}/long.txt\n"])
    warning = err.getvalue().splitlines()[-1]
    assert "more than the" in warning and "256-token context window: send to go on anyway" in warning
    chat.run(["summarise\n"])
    assert chat.session.conversation.turns[-1].role == "assistant"  # sent: the prompt kept its end


def test_the_fence_outgrows_backticks_inside():
    text = fenced(Attachment("r.md", "```py\nx\n```", 12))
    assert text.startswith("````r.md\n") and text.endswith("\n````")


async def test_the_tui_attaches_with_read_and_sends_with_the_message(parrot_checkpoint, tmp_path):
    from ui_helpers import make_app, passing_notes, ready, settle, type_keys

    from chatterm.ui.chat_view import UserMessage

    (tmp_path / "n.txt").write_text("note\x1b[31m red\n")
    app = make_app(parrot_checkpoint, max_new_tokens=4)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(app, pilot)
        app.commands.run(f"/read {tmp_path}/n.txt")
        await pilot.pause()
        assert any(n.startswith(f"attached {tmp_path}/n.txt (") for n in passing_notes(app))
        await type_keys(pilot, "hi")
        await pilot.press("enter")
        await settle(app, pilot)
        shown = str(app.chat.query(UserMessage).last().render())
        assert shown.startswith("hi\n\n```") and "note red" in shown and "\x1b" not in shown
