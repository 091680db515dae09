"""The Textual app driven through Pilot with real tiny models. Waits poll (`wait_until`)."""

import pytest
from textual.command import CommandPalette

from chatterm.session.user.config import AppConfig, load_config
from chatterm.ui.app import ChatApp
from chatterm.ui.chat_view import AssistantMessage, UserMessage
from chatterm.ui.prompt_input import PromptInput
from helpers import save_tiny_checkpoint, tiny_model, wait_until
from ui_helpers import make_app, notes, ready, settle, type_keys


async def type_and_send(pilot, text):
    await pilot.click(PromptInput)
    await type_keys(pilot, text)
    await pilot.press("enter")


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


@pytest.mark.slow
async def test_settings_change_mid_reply_applies_to_the_next_token(babbler):
    app = make_app(babbler, max_new_tokens=100000, temperature=1.0, top_k=0, top_p=1.0, min_p=0, seed=3)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(app, pilot)
        await type_and_send(pilot, "go")
        await wait_until(pilot, lambda: len(app.inspector.steps) >= 3, what="a few tokens")
        assert app.busy
        # Temperature 0 from the panel: every token after this is the top candidate.
        app.query_one("#set-temperature").value = "0"
        await wait_until(pilot, lambda: app.session.settings.temperature == 0)
        n_before = len(app.inspector.steps)
        await wait_until(pilot, lambda: len(app.inspector.steps) >= n_before + 8, what="more tokens")
        later = app.inspector.steps[n_before + 2 :]
        assert later and all(s.token_id == s.candidates[0][0] for s in later)
        # And max new tokens, lowered mid-reply, ends it.
        app.query_one("#set-max_new_tokens").value = "5"
        await settle(app, pilot)
        assert app.session.conversation.turns[-1].note == "cut at max_new_tokens"
        assert app.chat.query(AssistantMessage).last().border_subtitle == "cut at max_new_tokens"


async def test_escape_stops_and_keeps_the_partial_reply(babbler):
    app = make_app(babbler, max_new_tokens=100000, temperature=1.0, seed=1)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(app, pilot)
        await type_and_send(pilot, "talk")
        await wait_until(pilot, lambda: len(app.inspector.steps) >= 2, what="the reply to start")
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
        prompt = app.query_one(PromptInput)
        await wait_until(pilot, lambda: prompt.text == "hi")
        assert app.session.editing == 0  # the message stays until the edit is sent
        await pilot.press("enter")
        await settle(app, pilot)
        assert [t.text for t in app.session.conversation.turns] == ["hi", "hello there, friend"]
        assert len(app.session.conversation.turns[0].fork.options) == 2  # the old version is kept
        await pilot.press("ctrl+b")
        await wait_until(pilot, lambda: not app.chat.query(UserMessage))
        assert app.session.conversation.turns == []
        await pilot.press("up")
        assert prompt.text == "hi"  # input history


@pytest.mark.slow
async def test_slash_commands_and_unknown_ones(parrot_checkpoint, tmp_path):
    app = make_app(parrot_checkpoint)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(app, pilot)
        await type_and_send(pilot, "/sett x")
        await type_and_send(pilot, "/set temperature hot")
        await wait_until(pilot, lambda: len(notes(app)) >= 3)
        assert any("unknown command /sett" in n for n in notes(app))
        assert any("temperature: 'hot' is not a number" in n for n in notes(app))
        await type_and_send(pilot, "/theme chatterm-light")
        await wait_until(pilot, lambda: app.theme == "chatterm-light")
        assert load_config()[0].theme == "chatterm-light"
        await type_and_send(pilot, "hi")
        await settle(app, pilot)
        out = tmp_path / "chat.md"
        await type_and_send(pilot, f"/export {out}")
        await wait_until(pilot, out.exists)
        assert "**Assistant:** hello there, friend" in out.read_text()
        await type_and_send(pilot, f"/save {tmp_path / 'chat.json'}")
        await wait_until(pilot, (tmp_path / "chat.json").exists)
        await type_and_send(pilot, "/clear")
        await wait_until(pilot, lambda: not app.session.conversation.turns and not app.chat.query(UserMessage))
        await type_and_send(pilot, f"/load {tmp_path / 'chat.json'}")
        await wait_until(pilot, lambda: len(app.chat.query(UserMessage)) == 1)
        assert [t.text for t in app.session.conversation.turns] == ["hi", "hello there, friend"]
        await type_and_send(pilot, "/help")
        await wait_until(pilot, lambda: any("/retry" in n for n in notes(app)))
        await type_and_send(pilot, "/quit")
        await wait_until(pilot, lambda: not app.is_running)


@pytest.mark.slow
async def test_set_is_for_the_session_and_save_keeps_it(parrot_checkpoint):
    app = make_app(parrot_checkpoint)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(app, pilot)
        await type_and_send(pilot, "/set top_k 7")
        await wait_until(pilot, lambda: app.session.settings.top_k == 7)
        assert app.query_one("#set-top_k").value == "7"
        assert "top_k" not in load_config()[0].sampling  # the session only
        await type_and_send(pilot, "/set min-p 0.2 --save")
        await wait_until(pilot, lambda: app.session.settings.min_p == 0.2)
        saved = load_config()[0].sampling
        assert saved["min_p"] == 0.2 and "top_k" not in saved
        await type_and_send(pilot, "/system be brief")
        await wait_until(pilot, lambda: app.session.conversation.system == "be brief")
        assert load_config()[0].system_prompt == ""  # not saved without --save
        assert app.query_one("#set-system").value == "be brief"
        await type_and_send(pilot, "/system be terse --save")
        await wait_until(pilot, lambda: load_config()[0].system_prompt == "be terse")
        await type_and_send(pilot, "/settings")
        await wait_until(pilot, lambda: any("max_new_tokens =" in n for n in notes(app)))
        shown = next(n for n in notes(app) if "max_new_tokens =" in n)
        assert "top_k = 7 (session)" in shown
        assert "min_p = 0.2 (config)" in shown and "temperature = 0 (config)" in shown
        assert "top_p = 0.95 (built-in)" in shown
        assert "(session)" in str(app.query_one("#set-top_k").tooltip)


async def test_panel_changes_the_session_and_ctrl_s_saves_them(parrot_checkpoint):
    app = make_app(parrot_checkpoint)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(app, pilot)
        field = app.query_one("#set-repetition_penalty")
        field.value = "1.3"
        await wait_until(pilot, lambda: app.session.settings.repetition_penalty == 1.3)
        assert "repetition_penalty" not in load_config()[0].sampling
        field.focus()
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: load_config()[0].sampling.get("repetition_penalty") == 1.3)
        assert app.commands.settings.source_of("repetition_penalty") == "config"
        assert "(config)" in str(field.tooltip)


async def test_the_models_recommended_settings_apply_below_the_users(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "rec", tiny_model(seed=1), name="rec",
                                sampling={"top_k": 12, "temperature": 0.5, "top_p": "lots"})
    config = AppConfig()
    config.sampling.update({"temperature": 0.9})
    app = ChatApp(config, str(ckpt), [])
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(app, pilot)
        settings = app.commands.settings
        assert app.session.settings.top_k == 12 and settings.source_of("top_k") == "model"
        assert app.session.settings.temperature == 0.9 and settings.source_of("temperature") == "config"
        assert app.query_one("#set-top_k").value == "12"
        assert any("rec's recommended sampling: top_p" in n for n in notes(app))  # a bad entry, reported


async def test_panel_refuses_an_invalid_value_inline(parrot_checkpoint):
    app = make_app(parrot_checkpoint)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(app, pilot)
        before = app.session.settings.top_p
        field = app.query_one("#set-top_p")
        field.value = "1.7"
        error = app.query_one("#err-top_p")
        await wait_until(pilot, lambda: error.display)
        assert "out of range" in str(error.render())
        assert app.session.settings.top_p == before  # the previous value stays
        field.value = "0.5"
        await wait_until(pilot, lambda: not error.display)
        assert app.session.settings.top_p == 0.5


async def test_resize_to_small_terminals(parrot_checkpoint):
    app = make_app(parrot_checkpoint)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(app, pilot)
        side = app.query_one("#side")
        for size in ((60, 20), (40, 12)):
            await pilot.resize_terminal(*size)
            await wait_until(pilot, lambda: app.screen.has_class("-narrow"))
            assert not side.display or not side.region.width
        await type_and_send(pilot, "hi")
        await settle(app, pilot)
        assert app.chat.query(AssistantMessage).last().text.strip() == "hello there, friend"
        await pilot.press("f2")  # on a narrow screen the settings take three quarters of the width
        await wait_until(pilot, lambda: side.region.width >= 30)
        assert app.focused.id == "set-temperature"
        await pilot.press("f2")
        await wait_until(pilot, lambda: not side.region.width)
        await pilot.resize_terminal(100, 30)
        await wait_until(pilot, lambda: side.region.width > 0)


@pytest.mark.slow
async def test_bad_model_path_keeps_the_app_usable(parrot_checkpoint, tmp_path):
    app = ChatApp(AppConfig(), str(tmp_path / "missing"), [])
    async with app.run_test(size=(100, 30)) as pilot:
        await app.workers.wait_for_complete()  # the load fails: there is no model to be ready
        await wait_until(pilot, lambda: app.status.busy == "", what="the failed load")
        assert any("no such file or folder" in n for n in notes(app))
        await type_and_send(pilot, "hi")
        await wait_until(pilot, lambda: any("no model loaded" in n for n in notes(app)))
        await type_and_send(pilot, f"/model {parrot_checkpoint}")
        await wait_until(pilot, lambda: app.status.model == "parrot")
        assert app.session.backend is not None


@pytest.mark.slow
async def test_command_palette_runs_actions_and_switches_themes(parrot_checkpoint):
    app = make_app(parrot_checkpoint)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(app, pilot)
        await type_and_send(pilot, "hi")
        await settle(app, pilot)

        async def palette(query):
            await pilot.press("ctrl+p")
            await wait_until(pilot, lambda: isinstance(app.screen, CommandPalette))
            await type_keys(pilot, query)
            options = app.screen.query_one("CommandList")
            await wait_until(pilot, lambda: options.option_count > 0, what="the palette's search")
            await pilot.press("enter")
            await wait_until(pilot, lambda: not isinstance(app.screen, CommandPalette))
            await settle(app, pilot)

        await palette("undo the last")
        await wait_until(pilot, lambda: not app.chat.query(UserMessage))
        assert app.session.conversation.turns == []
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
