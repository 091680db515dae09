"""Continue a reply (same message, the KV cache reused), edit any message, $EDITOR, /copy:
session-level tests with the parrot, the remote backend against a scripted server, and the TUI
through Pilot."""

from __future__ import annotations

import io
import os
import stat

import pytest
from remote_servers import Scripted, ScriptedServer, chat_chunk, sse

from chatterm.engine.events import Finished, TextDelta
from chatterm.engine.settings import SamplingSettings
from chatterm.session import ChatSession, Conversation
from chatterm.session.commands import SlashCommands
from chatterm.session.external_editor import compose_in_editor
from chatterm.session.layered_settings import LayeredSettings
from chatterm.session.local_backend import LocalBackend
from chatterm.session.remote_backend import RemoteBackend
from chatterm.repl import PlainChat

GREEDY = dict(temperature=0, repetition_penalty=1.0)


@pytest.fixture(scope="module")
def backend(parrot_checkpoint):
    return LocalBackend.load(parrot_checkpoint)


def finished(events) -> Finished:
    events = list(events)
    assert isinstance(events[-1], Finished)
    return events[-1]


def test_continue_appends_to_the_same_reply_and_prefills_almost_nothing(backend):
    session = ChatSession(backend, SamplingSettings(**GREEDY, max_new_tokens=6))
    first = finished(session.send("hi"))
    turns = session.conversation.turns
    assert first.stop_reason == "length" and turns[-1].note == "cut at max_new_tokens"
    cut = turns[-1].text
    assert cut and "hello there, friend".startswith(cut) and cut != "hello there, friend"
    session.settings.max_new_tokens = 100
    more = list(session.continue_reply())
    done = more[-1]
    # The same message, grown: no new turn, and the text streamed is only the new part.
    assert [t.role for t in turns] == ["user", "assistant"]
    assert turns[-1].text == "hello there, friend" and turns[-1].note == "" and not turns[-1].stopped
    assert "".join(e.text for e in more if isinstance(e, TextDelta)) == done.text
    assert (cut + done.text).strip() == "hello there, friend"
    # The history was not read again: the cache held the prompt and the reply so far.
    assert first.prompt_tokens > 8 and done.prefill_tokens <= 2
    # And the continued turn's ids match what the cache holds: the next turn prefills only itself.
    after = finished(session.send("how are you?"))
    assert after.text.strip() == "very well, thank you"
    new_turn = len(backend.tokenizer.encode("User: how are you?\nAssistant:"))
    assert after.prefill_tokens <= new_turn + 1


def test_continue_refuses_without_a_reply(backend):
    session = ChatSession(backend, SamplingSettings(**GREEDY))
    with pytest.raises(ValueError, match="nothing to continue"):
        session.continue_reply()


def test_edit_a_user_message_regenerates_from_there_and_keeps_the_old_branch(backend):
    session = ChatSession(backend, SamplingSettings(**GREEDY))
    finished(session.send("hi"))
    finished(session.send("what is your name?"))
    assert session.start_edit(2) == "what is your name?"
    done = finished(session.send("how are you?"))  # replaces message 3, everything after it goes
    assert done.text.strip() == "very well, thank you"
    texts = [t.text for t in session.conversation.turns]
    assert texts == ["hi", "hello there, friend", "how are you?", "very well, thank you"]
    fork = session.conversation.turns[2].fork
    assert fork is not None and (fork.shown, len(fork.options)) == (1, 2)
    assert session.switch_alternative(2, -1)
    assert [t.text for t in session.conversation.turns][2:] == ["what is your name?", "my name is parrot"]


def test_edit_an_assistant_message_then_continue_it(backend):
    session = ChatSession(backend, SamplingSettings(**GREEDY))
    finished(session.send("hi"))
    session.start_edit(1)
    assert list(session.send("hello")) == []  # an assistant message is replaced, nothing generated
    assert [t.text for t in session.conversation.turns] == ["hi", "hello"]
    done = finished(session.continue_reply())
    assert session.conversation.turns[-1].text == "hello there, friend" and done.text.startswith(" there")


def test_remote_continue_sends_the_partial_reply_in_completion_mode_and_refuses_in_chat_mode():
    conv = Conversation()
    conv.add("user", "hi")
    conv.add("assistant", "hello", note="cut at max_new_tokens")
    body = sse(chat_chunk(" there"), chat_chunk(None, "stop"))
    with ScriptedServer([Scripted(body=body)]) as server:
        session = ChatSession(RemoteBackend.open(server.url, mode="completion"), SamplingSettings(), conv)
        done = finished(session.continue_reply())
        assert server.requests[0]["prompt"].endswith("User: hi\nAssistant: hello")
        assert conv.turns[-1].text == "hello there" and len(conv.turns) == 2 and done.error is None
        session.backend = RemoteBackend.open(server.url, mode="chat")
        with pytest.raises(ValueError, match="chat mode, which cannot continue a reply"):
            session.continue_reply()


def fake_editor(tmp_path, text: str, status: int = 0) -> str:
    """A tiny 'editor': appends to the file it is given what it was asked to write."""
    script = tmp_path / "editor.sh"
    script.write_text(f"#!/bin/sh\nprintf '%s' '{text}' >> \"$1\"\nexit {status}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_compose_in_editor_runs_visual_or_editor_and_returns_the_text(tmp_path, monkeypatch):
    monkeypatch.delenv("VISUAL", raising=False)
    monkeypatch.setenv("EDITOR", fake_editor(tmp_path, "written in the editor"))
    assert compose_in_editor("draft: ") == "draft: written in the editor"
    monkeypatch.setenv("VISUAL", fake_editor(tmp_path, "x", status=3))
    with pytest.raises(ValueError, match="exited with status 3"):
        compose_in_editor("")
    monkeypatch.delenv("VISUAL")
    monkeypatch.delenv("EDITOR")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="no editor found: set \\$EDITOR"):
        compose_in_editor("")
    assert not [p for p in os.listdir(os.environ.get("TMPDIR", "/tmp")) if p.startswith("chatterm-message-")]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_repl_continue_copy_and_editor(backend, tmp_path, monkeypatch):
    monkeypatch.setenv("EDITOR", fake_editor(tmp_path, "how are you?"))
    session = ChatSession(backend, SamplingSettings(**GREEDY, max_new_tokens=6))
    out, err = Terminal(), io.StringIO()
    repl = PlainChat(session, settings=LayeredSettings(session.settings), out=out, err=err)
    repl.run(["hi\n", "/set max_new_tokens 50\n", "/continue\n", "/copy\n", "/editor\n"])
    assert session.conversation.turns[-1].text == "hello there, friend"
    assert "\x1b]52;c;aGVsbG8gdGhlcmUsIGZyaWVuZA==\x07" in out.getvalue()  # base64 of the reply
    assert "copied message 2 (19 characters)" in err.getvalue()
    assert "how are you?" in err.getvalue()  # the editor's text is offered for sending
    plain = PlainChat(session, settings=LayeredSettings(session.settings), out=io.StringIO(), err=(err := io.StringIO()))
    plain.run(["/copy\n"])
    assert "/copy needs a terminal" in err.getvalue()
