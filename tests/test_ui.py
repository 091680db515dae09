"""The Textual app driven through Pilot with real tiny models."""

import pytest

from chatterm.session.config import AppConfig, load_config
from chatterm.ui.app import ChatApp
from chatterm.ui.chat_view import AssistantMessage, Note, UserMessage
from chatterm.ui.prompt_input import PromptInput
from helpers import byte_tokenizer_spec, save_tiny_checkpoint, tiny_model


@pytest.fixture(scope="module")
def babbler(tmp_path_factory):
    """A random tiny model: it never says "User:", so its replies run until told to stop."""
    folder = tmp_path_factory.mktemp("babbler") / "b"
    return save_tiny_checkpoint(folder, tiny_model(seed=0), byte_tokenizer_spec(eot=False), name="babbler")


def make_app(checkpoint, **sampling):
    config = AppConfig()
    config.sampling.update({"temperature": 0, **sampling})
    return ChatApp(config, str(checkpoint), [])


async def ready(app, pilot):
    await app.workers.wait_for_complete()
    await pilot.pause()


async def type_keys(pilot, text):
    for ch in text:
        await pilot.press("space" if ch == " " else ch)


async def type_and_send(pilot, text):
    await pilot.click(PromptInput)
    await type_keys(pilot, text)
    await pilot.press("enter")


async def settle(app, pilot):
    await app.workers.wait_for_complete()
    await pilot.pause()
    await pilot.pause()


def shown_text(app):
    return "\n".join(
        (w.text if isinstance(w, AssistantMessage) else str(w.render())) for w in app.chat.children
    )


async def test_send_streams_a_reply_without_the_stop_marker(parrot_checkpoint):
    app = make_app(parrot_checkpoint)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(app, pilot)
        assert app.status.model == "parrot"
        await type_and_send(pilot, "hi")
        await settle(app, pilot)
        replies = app.chat.query(AssistantMessage)
        assert len(replies) == 1 and replies.last().text.strip() == "hello there, friend"
        assert "User:" not in shown_text(app)
        assert "tok/s" in app.status.speed and app.status.context[0] > 0
        assert [t.role for t in app.session.conversation.turns] == ["user", "assistant"]
        assert app.inspector.steps and app.inspector.steps[0].candidates


async def test_settings_change_mid_reply_applies_to_the_next_token(babbler):
    app = make_app(babbler, max_new_tokens=100000, temperature=1.0, top_k=0, top_p=1.0, min_p=0, seed=3)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(app, pilot)
        await type_and_send(pilot, "go")
        await pilot.pause(0.3)
        assert app.generating
        # Temperature 0 from the panel: every token after this is the top candidate.
        field = app.query_one("#set-temperature")
        field.value = "0"
        await pilot.pause(0.3)
        n_before = len(app.inspector.steps)
        await pilot.pause(0.3)
        later = app.inspector.steps[n_before + 2 :]
        assert later and all(s.token_id == s.candidates[0][0] for s in later)
        # And max new tokens, lowered mid-reply, ends it.
        app.query_one("#set-max_new_tokens").value = "5"
        await settle(app, pilot)
        assert not app.generating
        assert app.session.conversation.turns[-1].note == "cut at max_new_tokens"
        assert app.chat.query(AssistantMessage).last().border_subtitle == "cut at max_new_tokens"


async def test_escape_stops_and_keeps_the_partial_reply(babbler):
    app = make_app(babbler, max_new_tokens=100000, temperature=1.0, seed=1)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(app, pilot)
        await type_and_send(pilot, "talk")
        await pilot.pause(0.3)
        await pilot.press("escape")
        await settle(app, pilot)
        turn = app.session.conversation.turns[-1]
        assert turn.role == "assistant" and turn.stopped and turn.text
        assert app.chat.query(AssistantMessage).last().border_subtitle == "stopped"


async def test_retry_undo_edit_and_history(parrot_checkpoint):
    app = make_app(parrot_checkpoint)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(app, pilot)
        await type_and_send(pilot, "hi")
        await settle(app, pilot)
        await pilot.press("ctrl+r")
        await settle(app, pilot)
        assert [t.text for t in app.session.conversation.turns] == ["hi", "hello there, friend"]
        assert len(app.chat.query(AssistantMessage)) == 1
        await pilot.press("ctrl+o")
        await pilot.pause()
        prompt = app.query_one(PromptInput)
        assert prompt.text == "hi" and app.session.conversation.turns == []
        await pilot.press("enter")
        await settle(app, pilot)
        await pilot.press("ctrl+b")
        await pilot.pause()
        assert app.session.conversation.turns == [] and not app.chat.query(UserMessage)
        await pilot.press("up")
        assert prompt.text == "hi"  # input history


async def test_slash_commands_and_unknown_ones(parrot_checkpoint, tmp_path):
    app = make_app(parrot_checkpoint)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(app, pilot)
        await type_and_send(pilot, "/set top_k 7")
        await pilot.pause()
        assert app.session.settings.top_k == 7 and app.query_one("#set-top_k").value == "7"
        await type_and_send(pilot, "/sett x")
        await type_and_send(pilot, "/set temperature hot")
        await pilot.pause()
        notes = [str(n.render()) for n in app.chat.query(Note)]
        assert any("unknown command /sett" in n for n in notes)
        assert any("temperature: 'hot' is not a number" in n for n in notes)
        await type_and_send(pilot, "/theme chatterm-light")
        await pilot.pause()
        assert app.theme == "chatterm-light"
        config, problems = load_config()
        assert config.theme == "chatterm-light" and config.sampling.top_k == 7 and not problems
        await type_and_send(pilot, "hi")
        await settle(app, pilot)
        out = tmp_path / "chat.md"
        await type_and_send(pilot, f"/export {out}")
        await pilot.pause()
        assert "**Assistant:** hello there, friend" in out.read_text()
        await type_and_send(pilot, "/help")
        await pilot.pause()
        assert any("/retry" in str(n.render()) for n in app.chat.query(Note))


async def test_invalid_setting_is_refused_inline(parrot_checkpoint):
    app = make_app(parrot_checkpoint)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(app, pilot)
        field = app.query_one("#set-top_p")
        field.value = "1.7"
        await pilot.pause()
        error = app.query_one("#err-top_p")
        assert "out of range" in str(error.render()) and error.display
        assert app.session.settings.top_p == 0.95  # the previous value stays
        field.value = "0.5"
        await pilot.pause()
        assert app.session.settings.top_p == 0.5 and not error.display


async def test_resize_to_small_terminals(parrot_checkpoint):
    app = make_app(parrot_checkpoint)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(app, pilot)
        for size in ((60, 20), (40, 12)):
            await pilot.resize_terminal(*size)
            await pilot.pause()
            assert app.screen.has_class("-narrow")
            assert not app.query_one("#side").display or not app.query_one("#side").region.width
        await type_and_send(pilot, "hi")
        await settle(app, pilot)
        assert app.chat.query(AssistantMessage).last().text.strip() == "hello there, friend"
        await pilot.press("f2")  # on a narrow screen the settings take the whole width
        await pilot.pause()
        assert app.query_one("#side").region.width >= 30 and app.focused.id == "set-temperature"
        await pilot.press("f2")
        await pilot.resize_terminal(100, 30)
        await pilot.pause()
        assert app.query_one("#side").region.width > 0


async def test_bad_model_path_keeps_the_app_usable(parrot_checkpoint, tmp_path):
    app = ChatApp(AppConfig(), str(tmp_path / "missing"), [])
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(app, pilot)
        assert any("no such file or folder" in str(n.render()) for n in app.chat.query(Note))
        await type_and_send(pilot, "hi")
        await pilot.pause()
        assert any("no model loaded" in str(n.render()) for n in app.chat.query(Note))
        await type_and_send(pilot, f"/model {parrot_checkpoint}")
        await settle(app, pilot)
        assert app.session.backend is not None and app.status.model == "parrot"


async def test_command_palette_runs_actions_and_switches_themes(parrot_checkpoint):
    app = make_app(parrot_checkpoint)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(app, pilot)
        await type_and_send(pilot, "hi")
        await settle(app, pilot)

        async def palette(query):
            await pilot.press("ctrl+p")
            await pilot.pause()
            await type_keys(pilot, query)
            await pilot.pause(0.3)  # the palette searches in the background
            await pilot.press("enter")
            await settle(app, pilot)

        await palette("undo the last")
        assert app.session.conversation.turns == [] and not app.chat.query(UserMessage)
        await palette("theme: chatterm-light")
        assert app.theme == "chatterm-light"


async def test_inspector_marks_the_held_back_stop_string(parrot_checkpoint):
    app = make_app(parrot_checkpoint)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(app, pilot)
        await type_and_send(pilot, "hi")
        await settle(app, pilot)
        inspector = app.inspector
        shown = "".join(s.text for s in inspector.steps[: inspector.shown_tokens])
        held = "".join(s.text for s in inspector.steps[inspector.shown_tokens :])
        assert shown.strip() == "hello there, friend" and held.strip().startswith("User")
        assert "cut: stop string" in str(inspector.render().renderables[0])
        inspector.focus()
        await pilot.press("home", "right")
        assert inspector.index == 1 and "cut" not in str(inspector.render().renderables[0])
