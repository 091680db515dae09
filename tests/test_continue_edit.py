"""Continue a reply (same message, the KV cache reused), edit any message, $EDITOR, /copy:
session-level tests with the parrot, the remote backend against a scripted server, and the TUI
through Pilot."""

from __future__ import annotations

import io
import os
import stat

import pytest
from remote_servers import Scripted, ScriptedServer, chat_chunk, sse
from ui_helpers import make_app, ready, settle

from chatterm.engine.events import Finished, TextDelta
from chatterm.engine.settings import SamplingSettings
from chatterm.session import ChatSession, Conversation
from chatterm.session.external_editor import compose_in_editor
from chatterm.session.user.layered_settings import LayeredSettings
from chatterm.session.backends.local import LocalBackend
from chatterm.session.backends.remote.backend import RemoteBackend
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
    layers = LayeredSettings()
    layers.set_layer("config", {"temperature": 0, "max_new_tokens": 6})
    session = ChatSession(backend, layers.live)
    out, err = Terminal(), io.StringIO()
    repl = PlainChat(session, settings=layers, out=out, err=err)
    repl.run(["hi\n", "/set max_new_tokens 50\n", "/continue\n", "/copy\n", "/editor\n"])
    assert session.conversation.turns[-1].text == "hello there, friend"
    assert "\x1b]52;c;aGVsbG8gdGhlcmUsIGZyaWVuZA==\x07" in out.getvalue()  # base64 of the reply
    assert "copied message 2 (19 characters)" in err.getvalue()
    assert "how are you?" in err.getvalue()  # the editor's text is offered for sending
    plain = PlainChat(session, settings=layers, out=io.StringIO(), err=(err := io.StringIO()))
    plain.run(["/copy\n"])
    assert "/copy needs a terminal" in err.getvalue()


# -- the TUI, keyboard only ------------------------------------------------------------------------

from chatterm.ui.app import ChatApp  # noqa: E402
from chatterm.ui.chat_view import AssistantMessage, UserMessage  # noqa: E402
from chatterm.ui.prompt_input import PromptInput  # noqa: E402
from helpers import wait_until  # noqa: E402


async def send(pilot, text):
    for ch in text:
        await pilot.press("space" if ch == " " else ch)
    await pilot.press("enter")


async def test_tui_continue_grows_the_same_message(parrot_checkpoint):
    app = make_app(parrot_checkpoint, max_new_tokens=6)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(app, pilot)
        await send(pilot, "hi")
        await settle(app, pilot)
        reply = app.chat.query_one(AssistantMessage)
        assert reply.border_subtitle == "cut at max_new_tokens" and reply.text != "hello there, friend"
        app.session.settings.max_new_tokens = 100
        await pilot.press("ctrl+t")
        await settle(app, pilot)
        assert app.chat.query_one(AssistantMessage) is reply  # the same widget, grown
        assert reply.text.strip() == "hello there, friend" and not reply.border_subtitle
        assert [t.text for t in app.session.conversation.turns] == ["hi", "hello there, friend"]


@pytest.mark.slow
async def test_tui_select_edit_copy_and_editor_with_keys_only(parrot_checkpoint, tmp_path, monkeypatch):
    monkeypatch.delenv("VISUAL", raising=False)
    monkeypatch.setenv("EDITOR", fake_editor(tmp_path, "what is your name?"))
    app = make_app(parrot_checkpoint)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(app, pilot)
        await send(pilot, "hi")
        await settle(app, pilot)
        await pilot.press("alt+c")  # nothing selected: the last reply
        assert app.clipboard == "hello there, friend"
        await pilot.press("alt+up", "alt+up")  # the user's message
        assert app.selected == 0 and app.chat.query_one(UserMessage).has_class("-selected")
        await pilot.press("alt+c")
        assert app.clipboard == "hi"
        await pilot.press("ctrl+o")
        prompt = app.query_one(PromptInput)
        assert prompt.text == "hi" and "Editing message 1" in str(prompt.border_title)
        await pilot.press("escape")  # cancels the edit, and then the selection
        assert app.session.editing is None and prompt.text == "" and "Editing" not in str(prompt.border_title)
        await pilot.press("escape")
        assert app.selected is None
        # Edit message 1 for real: the box gets the text, Enter replaces it and regenerates.
        await pilot.press("alt+up", "alt+up", "ctrl+o")
        await pilot.press("ctrl+u")  # the box's own key: clear the line
        await send(pilot, "how are you?")
        await settle(app, pilot)
        await wait_until(pilot, lambda: "1/2" not in str(app.chat.query_one(UserMessage).border_title)
                         and len(app.message_widgets()) == 2)
        assert [t.text for t in app.session.conversation.turns] == ["how are you?", "very well, thank you"]
        assert str(app.chat.query_one(UserMessage).border_title) == "You · 2/2"
        # $EDITOR: Ctrl+G puts what the editor wrote into the box, ready to send.
        await pilot.press("ctrl+g")
        await wait_until(pilot, lambda: prompt.text == "what is your name?")
        await pilot.press("enter")
        await settle(app, pilot)
        assert app.session.conversation.turns[-1].text == "my name is parrot"


@pytest.mark.slow
def test_continue_with_a_models_own_jinja_template_reuses_the_cache(tmp_path):
    from tiny_llama import CHATML, hf_model, save_hf_folder

    from chatterm.session.prompts.jinja_template import JinjaPromptBuilder

    backend = LocalBackend.load(save_hf_folder(tmp_path / "chatml", hf_model("qwen2", seed=3), template=CHATML))
    assert isinstance(backend.prompts, JinjaPromptBuilder)
    session = ChatSession(backend, SamplingSettings(temperature=0, max_new_tokens=6), Conversation(system="Be brief."))
    first = finished(session.send("Hello there"))
    assert first.stop_reason == "length"
    cut = session.conversation.turns[-1].text
    done = finished(session.continue_reply())
    assert done.prefill_tokens <= 2 and done.new_tokens > 0
    turn = session.conversation.turns[-1]
    assert len(session.conversation.turns) == 2 and turn.text == (cut + done.text).rstrip()


def test_copy_makes_model_text_inert_before_the_clipboard(backend):
    conv = Conversation()
    conv.add("user", "hi")
    conv.add("assistant", "\x1b]52;c;ZXZpbA==\x07rm -rf \x1b[2Jhome")
    out, err = Terminal(), io.StringIO()
    PlainChat(ChatSession(backend, SamplingSettings(), conv), out=out, err=err).run(["/copy\n"])
    import base64
    sent = out.getvalue()
    assert sent.startswith("\x1b]52;c;") and sent.endswith("\x07")
    assert base64.b64decode(sent[7:-1]).decode() == "rm -rf home"


def test_the_new_keys_are_not_taken_by_the_message_box():
    from chatterm.ui.keys import consumed_keys

    taken = consumed_keys(PromptInput)
    new = {"continue", "select_previous", "select_next", "previous_alternative", "next_alternative", "copy", "editor"}
    keys = {b.id: b.key for b in ChatApp.BINDINGS if b.id in new}
    assert set(keys) == new and not [k for k in keys.values() if k in taken]
    assert all(action in ChatApp.ACTION_HELP for action in new)
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md"), encoding="utf-8").read()
    for shown in ("Ctrl+T", "Alt+Up / Alt+Down", "Alt+Left / Alt+Right", "Alt+C", "Ctrl+G"):
        assert f"| {shown} |" in readme
