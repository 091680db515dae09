"""Issue 15, the UI half: what got in the way of a new user, driven through Pilot.

Keyboard scrolling, focus after the panels' keys and Esc, Alt+Enter as terminals send it, messages
queued while the model loads or a reply streams, key remaps the message box would swallow, the
status bar (notes, the meter after /load, the footer at 80 columns, live tok/s), focus that shows
without colour, the narrow breakpoint in the README, the welcome line and turns marked out of
context. Waits poll (`wait_until`).
"""

import re
from pathlib import Path

import pytest
from textual._xterm_parser import XTermParser
from textual.widgets import TextArea

from chatterm.session.chats.conversation import Conversation
from chatterm.session.chats.persistence import write_conversation
from chatterm.ui.app import NARROW_BELOW, ChatApp
from chatterm.ui.chat_view import OUT_OF_CONTEXT, AssistantMessage, UserMessage
from chatterm.ui.keys import check_keymap, class_bindings, consumed_keys
from chatterm.ui.prompt_input import PromptInput
from chatterm.ui.send_queue import QueuedMessage
from chatterm.ui.status_bar import NOTE_CELLS
from chatterm.ui.terminal_keys import recognise_alt_enter
from helpers import wait_until
from ui_helpers import make_app, notes, ready, settle, type_keys

README = Path(__file__).resolve().parents[1] / "README.md"


# -- 1. keyboard scrolling --------------------------------------------------------------------

async def test_page_keys_scroll_the_chat_while_the_message_box_keeps_the_focus(parrot_checkpoint):
    app = make_app(parrot_checkpoint)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(app, pilot)
        await pilot.press("f1")  # /help: longer than the screen
        chat = app.chat
        await wait_until(pilot, lambda: chat.max_scroll_y > 10 and chat.scroll_y == chat.max_scroll_y)
        bottom = chat.scroll_y
        for key in ("pageup", "shift+pageup"):
            before = chat.scroll_y
            await pilot.press(key)
            await wait_until(pilot, lambda: chat.scroll_y < before, what=f"{key} to scroll up")
            assert isinstance(app.focused, PromptInput)
        await pilot.press("pagedown")
        await wait_until(pilot, lambda: chat.scroll_y > 0 and chat.scroll_y < bottom or chat.scroll_y == bottom)
        await pilot.press("ctrl+home")
        await wait_until(pilot, lambda: chat.scroll_y == 0, what="Ctrl+Home to reach the top")
        await pilot.press("ctrl+end")
        await wait_until(pilot, lambda: chat.scroll_y == chat.max_scroll_y, what="Ctrl+End to reach the end")
        assert isinstance(app.focused, PromptInput)
        await type_keys(pilot, "ok")
        assert app.prompt.text == "ok"


# -- 2. focus -----------------------------------------------------------------------------------

async def test_narrow_screen_panels_give_the_focus_back_and_esc_closes_them(parrot_checkpoint):
    app = make_app(parrot_checkpoint)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(app, pilot)
        side = app.side
        await pilot.press("f2")
        await wait_until(pilot, lambda: side.overlay and side.region.width > 30)
        assert app.focused.id == "set-temperature"
        await pilot.press("f2")
        await wait_until(pilot, lambda: not side.region.width)
        await type_keys(pilot, "hello")
        assert app.prompt.text == "hello"
        for key in ("f2", "f3"):  # Esc closes the overlay, whichever panel opened it
            await pilot.press(key)
            await wait_until(pilot, lambda: side.overlay)
            assert app.focused is not app.prompt
            await pilot.press("escape")
            await wait_until(pilot, lambda: not side.overlay and not side.region.width)
            assert app.focused is app.prompt
        await type_keys(pilot, "!")
        assert app.prompt.text == "hello!"


async def test_wide_screen_keys_focus_a_shown_panel_before_hiding_it(parrot_checkpoint):
    app = make_app(parrot_checkpoint)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(app, pilot)
        settings, inspector = app.settings_panel, app.inspector
        assert settings.region.width and inspector.region.width  # both shown at start
        await pilot.press("f2")  # shown, not focused: focus it, keep it
        assert app.focused.id == "set-temperature" and settings.display
        await pilot.press("f2")  # focused: hide it, back to the message box
        await wait_until(pilot, lambda: not settings.display)
        assert app.focused is app.prompt
        await pilot.press("f3")
        assert app.focused is inspector and inspector.display
        await pilot.press("escape")  # Esc leaves a side panel for the message box
        assert app.focused is app.prompt and inspector.display
        await pilot.press("f2")  # hidden: show and focus
        await wait_until(pilot, lambda: settings.display)
        assert app.focused.id == "set-temperature"
        await pilot.press("f2")
        await type_keys(pilot, "typed")
        assert app.prompt.text == "typed"
        await pilot.press("f3")  # the inspector has the focus when the terminal is narrowed
        assert app.focused is inspector
        await pilot.resize_terminal(80, 24)
        await wait_until(pilot, lambda: app.focused is app.prompt, what="the focus back in the box")
        await type_keys(pilot, "!")
        assert app.prompt.text == "typed!"


# -- 3. Alt+Enter -------------------------------------------------------------------------------

def parse(data: str) -> list[str]:
    parser = XTermParser()
    keys = [e.key for e in parser.feed(data)]
    return keys + [e.key for e in parser.feed("")]  # end of input: a pending ESC is resolved


def test_the_escape_return_terminals_send_for_alt_enter_arrives_as_alt_enter():
    recognise_alt_enter()
    recognise_alt_enter()  # once only
    assert parse("\x1b\r") == ["alt+enter"]
    assert parse("\x1b\n") == ["alt+enter"]
    assert parse("\x1b") == ["escape"]  # a lone Esc still stops a reply
    assert parse("\r") == ["enter"]
    assert parse("\x1bx") == ["alt+x"]


async def test_alt_enter_adds_a_line_and_esc_still_stops(parrot_checkpoint):
    app = make_app(parrot_checkpoint)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(app, pilot)
        await type_keys(pilot, "one")
        await pilot.press("alt+enter")
        await type_keys(pilot, "two")
        assert app.prompt.text == "one\ntwo" and not app.session.conversation.turns


# -- 4. messages typed while the model loads or a reply streams ---------------------------------

async def test_a_message_sent_while_the_model_loads_is_queued_then_sent(parrot_checkpoint):
    app = make_app(parrot_checkpoint)
    async with app.run_test(size=(80, 24)) as pilot:
        await type_keys(pilot, "hi")
        await pilot.press("enter")  # at once: the model is still loading
        assert app.session.backend is None or app.session.conversation.turns
        await wait_until(pilot, lambda: len(app.session.conversation.turns) == 2, what="the queued message's reply")
        await settle(app, pilot)
        assert [t.text for t in app.session.conversation.turns] == ["hi", "hello there, friend"]
        assert not app.chat.query(QueuedMessage) and app.prompt.text == ""


@pytest.mark.slow
async def test_a_message_sent_during_a_reply_waits_for_it_and_esc_takes_it_back(babbler):
    app = make_app(babbler, max_new_tokens=100000, temperature=1.0, seed=1)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(app, pilot)
        # Esc during the reply: the reply stops and the queued text comes back into the box.
        app.send("first")
        await wait_until(pilot, lambda: app.busy)
        await type_keys(pilot, "later")
        await pilot.press("enter")
        assert app.prompt.text == "" and app.queue.text == "later"
        queued = app.chat.query(QueuedMessage)
        assert len(queued) == 1 and "queued" in str(queued.first().border_title)
        await pilot.press("escape")
        await settle(app, pilot)
        assert app.prompt.text == "later" and not app.queue.pending and not app.chat.query(QueuedMessage)
        assert app.session.conversation.turns[-1].stopped
        assert [t.text for t in app.session.conversation.turns if t.role == "user"] == ["first"]
        # Left alone, the queued message goes out when the reply ends.
        app.prompt.clear()
        app.send("again")
        await wait_until(pilot, lambda: app.busy)
        await type_keys(pilot, "second")
        await pilot.press("enter")
        await type_keys(pilot, "third")
        await pilot.press("enter")
        assert app.queue.text == "second\n\nthird"  # typed during one reply: one message
        app.commands.run("/set max_new_tokens 3")  # read at the next token: the reply ends
        await wait_until(pilot, lambda: len(app.session.conversation.turns) == 6, what="the queued message's reply")
        await settle(app, pilot)
        assert [t.text for t in app.session.conversation.turns if t.role == "user"] == ["first", "again", "second\n\nthird"]
        assert not app.chat.query(QueuedMessage)


# -- 5. key remaps the message box would swallow ------------------------------------------------

def test_every_key_the_text_area_binds_is_reported_and_the_readme_example_works():
    consumed = consumed_keys(PromptInput)
    for binding in class_bindings(TextArea):
        for key in binding.key.split(","):
            assert key in consumed, key
    usable, problems = check_keymap({"undo": "ctrl+u"}, list(ChatApp.BINDINGS), [], PromptInput)
    assert usable == {} and "message box uses ctrl+u" in problems[0]
    example = re.search(r"e\.g\. `(\w+) = \"([^\"]+)\"`", README.read_text())
    assert example, "the README's [keys] example"
    usable, problems = check_keymap({example[1]: example[2]}, list(ChatApp.BINDINGS), [], PromptInput)
    assert usable == {example[1]: example[2]} and problems == []


# -- 6. status bar ------------------------------------------------------------------------------

def long_chat(turns: int = 30) -> Conversation:
    conversation = Conversation()
    for i in range(turns):
        conversation.add("user", f"question number {i} about something rather long to say")
        conversation.add("assistant", f"answer number {i}, which is also a fairly long line of text")
    return conversation


async def test_clear_drops_the_note_and_load_fits_the_meter_and_marks_old_turns(parrot_checkpoint, tmp_path):
    path = tmp_path / "long.json"
    write_conversation(path, long_chat())
    app = make_app(parrot_checkpoint)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(app, pilot)
        app.commands.run(f"/load {path}")
        await pilot.pause()
        used, window = app.status.context
        assert 0 < used <= window  # was 1,300/256 until the next message
        start = app.session.conversation.context_start
        assert 0 < start < 60
        messages = [w for w in app.chat.children if isinstance(w, (UserMessage, AssistantMessage))]
        assert all(w.has_class("-out-of-context") for w in messages[:start])
        assert not any(w.has_class("-out-of-context") for w in messages[start:])
        assert OUT_OF_CONTEXT in str(messages[0].border_title)
        app.status_note("dropped 6 old turns")
        app.commands.run("/clear")
        await pilot.pause()
        # The note about the old chat is gone; the bar says what /clear did (a passing note).
        assert app.status.note == "new conversation (the last one is saved)" and app.status.context[0] == 0


async def test_a_long_note_goes_to_a_toast_and_the_bar_keeps_a_short_one(parrot_checkpoint):
    app = make_app(parrot_checkpoint)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(app, pilot)
        long = "a note that is much longer than the status bar has room for at eighty columns"
        app.status_note(long)
        await pilot.pause()
        assert long in app.recent_notes and long not in notes(app)  # passing: not in the transcript
        assert [n.message for n in app._notifications][-1] == long  # shown in full, in a toast
        assert len(app.status.note) <= len(long)
        assert len(str(app.status.render())) <= 80 and str(app.status.render()).count("…") <= 1
        app.status_note("short", "the whole story, in the chat")
        await pilot.pause()
        assert app.status.note == "short" and [n.message for n in app._notifications][-1] == "the whole story, in the chat"
        assert NOTE_CELLS < 80


async def test_the_footer_shows_help_at_80_columns(parrot_checkpoint):
    app = make_app(parrot_checkpoint)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(app, pilot)
        keys = {k.action: k for k in app.screen.query("FooterKey")}
        for action in ("help", "stop", "toggle_settings", "quit"):
            assert action in keys and keys[action].region.right <= 80, action


async def test_tok_per_second_shows_while_the_reply_streams(babbler):
    app = make_app(babbler, max_new_tokens=100000, temperature=1.0, seed=1)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(app, pilot)
        app.send("go")
        await wait_until(pilot, lambda: app.busy and "tok/s" in app.status.speed, what="a live tok/s")
        assert "TTFT" not in app.status.speed  # the live figure, not the last reply's
        await pilot.press("escape")
        await settle(app, pilot)
        assert "TTFT" in app.status.speed


# -- 7. focus visible without colour ------------------------------------------------------------

async def test_the_focused_setting_is_marked_by_a_glyph_not_only_a_colour(parrot_checkpoint):
    app = make_app(parrot_checkpoint)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(app, pilot)
        field = app.query_one("#set-top_k")
        assert field.styles.border_left[0] in ("", "none", "blank")
        field.focus()
        await pilot.pause()
        assert field.styles.border_left[0] not in ("", "none", "blank", "hidden")
        label = field.parent.query_one(".setting-label")
        assert "reverse" in str(label.styles.text_style)
        assert app.settings_panel.styles.border_top[0] != "round"  # the panel's frame changes too


# -- 8. the README's narrow breakpoint ----------------------------------------------------------

def test_readme_names_the_width_below_which_the_side_panel_hides():
    text = " ".join(README.read_text().split())
    assert f"hides below {NARROW_BELOW} columns" in text
    assert "hides below 80" not in text


# -- 9. welcome line, turns out of context ------------------------------------------------------

async def test_first_run_welcome_says_model_folder_and_help(parrot_checkpoint):
    app = make_app(parrot_checkpoint)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(app, pilot)
        welcome = [n for n in notes(app) if n.startswith("Welcome")]
        assert len(welcome) == 1
        assert "parrot" in welcome[0] and "conversations" in welcome[0] and "F1" in welcome[0] and "/help" in welcome[0]
        app.send("hi")
        await settle(app, pilot)
    app = make_app(parrot_checkpoint)  # a chat is saved now: no welcome the second time
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(app, pilot)
        assert not [n for n in notes(app) if n.startswith("Welcome")]


async def test_turns_dropped_while_chatting_are_marked_out_of_context(parrot_checkpoint):
    app = make_app(parrot_checkpoint, max_new_tokens=8)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(app, pilot)
        for _ in range(12):
            app.send("what is your name? " * 3)
            await settle(app, pilot)
            if app.session.conversation.context_start:
                break
        start = app.session.conversation.context_start
        assert start > 0, "the window never filled"
        messages = [w for w in app.chat.children if isinstance(w, (UserMessage, AssistantMessage))]
        assert [w.has_class("-out-of-context") for w in messages] == [i < start for i in range(len(messages))]
        assert app.status.note.startswith("dropped")


async def test_the_first_screen_on_the_shipped_model_says_how_to_get_a_real_one(parrot_checkpoint):
    from chatterm.session.user.folders import default_checkpoint

    app = make_app(default_checkpoint())
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(app, pilot)
        assert any("chatterm pull smollm2-135m-instruct" in n for n in notes(app))
    app = make_app(parrot_checkpoint)  # a model of one's own: no hint
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(app, pilot)
        assert not any("chatterm pull" in n for n in notes(app))
