"""Alternatives: regenerating or editing keeps the earlier version as a sibling; stepping between
them shows each one's branch; they are saved and loaded with the conversation (old files still
load) and /export writes the branch on screen. Session-level tests, then the TUI through Pilot."""

from __future__ import annotations

import json

import pytest

from chatterm.engine.settings import SamplingSettings
from chatterm.session import ChatSession, Conversation, ConversationStore, read_conversation
from chatterm.session.backends.local import LocalBackend

GREEDY = dict(temperature=0, repetition_penalty=1.0)


@pytest.fixture(scope="module")
def backend(parrot_checkpoint):
    return LocalBackend.load(parrot_checkpoint)


def texts(conv: Conversation) -> list[str]:
    return [t.text for t in conv.turns]


def branchy() -> Conversation:
    """hi -> [v1 -> how are you? -> fine | v2 | v3 (shown) -> what? -> parrot], made by hand."""
    conv = Conversation()
    conv.add("user", "hi")
    conv.add("assistant", "v1")
    conv.add("user", "how are you?")
    conv.add("assistant", "fine")
    conv.branch_at(1)
    conv.add("assistant", "v2")
    conv.branch_at(1)
    conv.add("assistant", "v3")
    conv.add("user", "what?")
    conv.add("assistant", "parrot")
    return conv


def test_branches_switch_and_each_keeps_what_followed_it():
    conv = branchy()
    assert texts(conv) == ["hi", "v3", "what?", "parrot"] and conv.forked_indices() == [1]
    fork = conv.turns[1].fork
    assert (fork.shown, len(fork.options)) == (2, 3)
    assert conv.switch(1, -2)
    assert texts(conv) == ["hi", "v1", "how are you?", "fine"]
    assert conv.switch(1, -1)  # wraps around to the last version
    assert texts(conv) == ["hi", "v3", "what?", "parrot"]
    assert not conv.switch(0, 1)  # no alternatives there


@pytest.mark.slow
def test_regenerate_keeps_the_earlier_replies_and_the_conversation_goes_on_from_the_shown_one(backend):
    session = ChatSession(backend, SamplingSettings(**GREEDY))
    list(session.send("hi"))
    again = list(session.regenerate())[-1]
    assert again.prefill_tokens == 1  # the prompt is still in the cache
    list(session.regenerate())
    conv = session.conversation
    assert len(conv.turns) == 2 and (conv.turns[1].fork.shown, len(conv.turns[1].fork.options)) == (2, 3)
    list(session.send("how are you?"))
    assert session.switch_alternative(1, -1)
    assert texts(conv) == ["hi", "hello there, friend"]  # version 2 had nothing after it
    list(session.send("what is your name?"))
    assert texts(conv)[-1] == "my name is parrot"
    assert session.switch_alternative(1, 1)
    assert texts(conv)[2:] == ["how are you?", "very well, thank you"]


def test_a_reply_that_never_came_shows_the_previous_version_again(backend):
    session = ChatSession(backend, SamplingSettings(**GREEDY))
    list(session.send("hi"))
    events = session.regenerate()
    next(events)  # the reply starts, then its consumer goes away before the end
    events.close()
    assert texts(session.conversation) == ["hi", "hello there, friend"]
    assert session.conversation.turns[1].fork is None


def test_alternatives_are_saved_and_loaded_and_export_writes_the_shown_branch(tmp_path):
    conv = branchy()
    store = ConversationStore(tmp_path / "conversations")
    path = store.save(conv)
    data = json.loads(path.read_text())
    assert data["version"] == 2 and [t["text"] for t in data["turns"]] == ["hi", "v3", "what?", "parrot"]
    alternatives = data["turns"][1]["alternatives"]
    assert alternatives["shown"] == 2 and [[t["text"] for t in o] for o in alternatives["others"]] == [
        ["v1", "how are you?", "fine"], ["v2"]]
    loaded = read_conversation(path)
    assert loaded.id == conv.id and texts(loaded) == texts(conv)
    assert loaded.switch(1, 1) and texts(loaded) == ["hi", "v1", "how are you?", "fine"]
    assert loaded.switch(1, 1) and texts(loaded) == ["hi", "v2"]
    markdown = conv.to_markdown()
    assert "**Assistant:** v3" in markdown and "v1" not in markdown and "fine" not in markdown


def test_old_files_load_and_bad_alternatives_are_refused(tmp_path):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"id": "20250101-000000-abcdef12", "system": "", "turns": [
        {"role": "user", "text": "hi"}, {"role": "assistant", "text": "hello", "note": "stopped", "stopped": True}]}))
    conv = read_conversation(old)
    assert texts(conv) == ["hi", "hello"] and conv.forked_indices() == []
    bad = tmp_path / "bad.json"
    for alternatives in ({"shown": 5, "others": [[{"role": "user", "text": "x"}]]}, {"shown": 0, "others": [[]]},
                         {"shown": 0, "others": "x"}):
        bad.write_text(json.dumps({"turns": [{"role": "user", "text": "hi", "alternatives": alternatives}]}))
        with pytest.raises(ValueError, match="not a chatterm conversation"):
            read_conversation(bad)
    # Ids inside alternatives are never read: only the conversation's own id names a file.
    sneaky = tmp_path / "sneaky.json"
    sneaky.write_text(json.dumps({"id": "../../etc/x", "turns": [{"role": "user", "text": "hi", "alternatives": {
        "shown": 1, "others": [[{"role": "user", "text": "yo", "id": "../x"}]]}}]}))
    loaded = read_conversation(sneaky)
    assert loaded.id != "../../etc/x" and loaded.switch(0, 1) and texts(loaded) == ["yo"]


# -- the TUI -------------------------------------------------------------------------------------

from chatterm.session.user.config import AppConfig  # noqa: E402
from chatterm.ui.app import ChatApp  # noqa: E402
from chatterm.ui.chat_view import AssistantMessage  # noqa: E402
from helpers import wait_until  # noqa: E402


@pytest.mark.slow
async def test_tui_retry_keeps_versions_and_alt_left_right_step_between_them(parrot_checkpoint, tmp_path):
    config = AppConfig()
    config.sampling.update({"temperature": 0})
    app = ChatApp(config, str(parrot_checkpoint), [])

    async def settle():
        await wait_until(pilot, lambda: not app.busy, what="the reply to finish")
        await app.workers.wait_for_complete()
        await pilot.pause()

    def titles():
        return [str(w.border_title) for w in app.message_widgets()]

    async with app.run_test(size=(80, 24)) as pilot:
        await app.workers.wait_for_complete()
        await wait_until(pilot, lambda: app.status.busy == "", what="the model to load")
        for ch in "hi":
            await pilot.press(ch)
        await pilot.press("enter")
        await settle()
        await pilot.press("ctrl+r")
        await settle()
        await pilot.press("ctrl+r")
        await settle()
        assert len(app.chat.query(AssistantMessage)) == 1
        assert titles() == ["You", "Assistant · 3/3"]
        await pilot.press("alt+left")  # nothing selected: the last message with versions
        await wait_until(pilot, lambda: titles() == ["You", "Assistant · 2/3"])
        assert app.session.conversation.turns[1].fork.shown == 1
        for ch in "how are you?":
            await pilot.press("space" if ch == " " else ch)
        await pilot.press("enter")
        await settle()
        await pilot.press("alt+up", "alt+up", "alt+up")  # select the first reply, three messages up
        assert app.selected == 1
        await pilot.press("alt+right")
        await wait_until(pilot, lambda: titles() == ["You", "Assistant · 3/3"])
        assert [t.text for t in app.session.conversation.turns] == ["hi", "hello there, friend"]
        await pilot.press("alt+left")
        await wait_until(pilot, lambda: len(titles()) == 4 and titles()[1] == "Assistant · 2/3")
        out = tmp_path / "branch.md"
        for ch in f"/export {out}":
            await pilot.press("space" if ch == " " else ch)
        await pilot.press("enter")
        await wait_until(pilot, out.exists)
        assert "**User:** how are you?" in out.read_text()
