"""What a new user still tripped over (issue 26), each checked as they met it: the command line,
the REPL and the TUI driven through Pilot."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_llama import hf_model, write_gguf

from chatterm.cli import main
from chatterm.model.errors import CheckpointError
from chatterm.session import open_backend
from chatterm.session.commands import help_lines, parse_command
from chatterm.session.user.installed_models import models_dir
from helpers import wait_until


@pytest.mark.parametrize("argv, usage", [(["pull"], "usage: chatterm pull"), (["generate"], "usage: chatterm generate"),
                                         (["models", "--bogus"], "usage: chatterm models")])
def test_each_sub_command_has_its_own_usage_and_errors(capsys, argv, usage):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(usage) and "[MODEL] [--plain]" not in err


def test_a_sub_commands_help_is_its_own(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert capsys.readouterr().out.startswith("usage: chatterm generate [-h]")


def test_part_of_an_installed_name_suggests_the_names_that_match(capsys):
    models_dir().mkdir(parents=True)
    write_gguf(models_dir() / "smollm2-135m-instruct.gguf", hf_model("llama", seed=1))
    assert main(["smollm2", "--plain"]) == 2
    assert capsys.readouterr().err == ("chatterm: error: smollm2: no such file or folder; installed models that "
                                       "match: smollm2-135m-instruct (chatterm smollm2-135m-instruct)\n")


def test_part_of_a_known_name_not_installed_says_how_to_pull_it(capsys):
    assert main(["smol", "--plain"]) == 2
    assert "did you mean smollm2-135m-instruct? Install it with: chatterm pull smollm2-135m-instruct" in \
        capsys.readouterr().err


def test_an_unsupported_architecture_says_how_to_run_the_file_anyway(tmp_path):
    import gguf

    writer = gguf.GGUFWriter(str(tmp_path / "a.gguf"), "mamba")
    writer.add_tensor("x", np.zeros((2, 32), np.float32))
    writer.write_header_to_file(); writer.write_kv_data_to_file(); writer.write_tensors_to_file(); writer.close()
    with pytest.raises(CheckpointError) as err:
        open_backend(str(tmp_path / "a.gguf"))
    message = str(err.value)
    assert "architecture 'mamba' is not supported" in message and "\n" not in message
    assert f"llama-server -m {tmp_path / 'a.gguf'} --port 8080) and run: chatterm http://localhost:8080/v1" in message


def test_ollamas_bye_and_the_other_common_aliases_are_known():
    assert {parse_command(f"/{word}").name for word in ("bye", "exit", "q", "quit")} == {"quit"}
    assert parse_command("/reset").name == "clear" and parse_command("/file a.txt").name == "read"
    assert "/exit /q /bye = /quit" in help_lines()[-1]


# -- the TUI -----------------------------------------------------------------------------------

async def test_the_inspector_follows_the_version_on_screen_and_undo(parrot_checkpoint):
    from ui_helpers import make_app, ready, settle, type_keys

    app = make_app(parrot_checkpoint, max_new_tokens=3)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(app, pilot)
        await type_keys(pilot, "hi")
        await pilot.press("enter")
        await settle(app, pilot)
        assert len(app.inspector.steps) == 3
        app.commands.run("/set max_new_tokens 5")
        await pilot.press("ctrl+r")
        await settle(app, pilot)
        assert len(app.inspector.steps) == 5
        await pilot.press("alt+left")  # version 1 of 2 is on screen: its 3 tokens
        await pilot.pause()
        assert len(app.inspector.steps) == 3 and app.inspector.shown_tokens == 3
        await pilot.press("alt+right")
        await pilot.pause()
        assert len(app.inspector.steps) == 5
        await pilot.press("ctrl+b")  # the exchange is gone: so are its tokens
        await pilot.pause()
        assert app.inspector.steps == [] and app.inspector.note is None


async def test_at_80_by_24_the_panels_leave_the_reply_in_view(parrot_checkpoint):
    from ui_helpers import make_app, ready, settle, type_keys

    from chatterm.ui.chat_view import AssistantMessage

    app = make_app(parrot_checkpoint)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(app, pilot)
        await type_keys(pilot, "hi")
        await pilot.press("enter")
        await settle(app, pilot)
        side, reply = app.side, app.chat.query(AssistantMessage).last()
        for key in ("f2", "f3"):
            await pilot.press(key)
            await pilot.pause()
            assert side.overlay and side.region.width == 42
            # The chat reflows beside the panel: the reply is still on screen, whole.
            assert reply.region.width >= 30 and reply.region.right <= side.region.x
            assert app.chat.region.contains_region(reply.region)
            await pilot.press("escape")
            await pilot.pause()


@pytest.mark.parametrize("query, expected", [("export", "/export PATH.md"), ("resume", "/chats"),
                                             ("load", "/load N|ID|PATH"), ("save", "/save"), ("bye", "/quit")])
async def test_the_command_palette_holds_every_slash_command(parrot_checkpoint, query, expected):
    from textual.command import CommandPalette
    from ui_helpers import make_app, ready

    app = make_app(parrot_checkpoint)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(app, pilot)
        await pilot.press("ctrl+p")
        await wait_until(pilot, lambda: isinstance(app.screen, CommandPalette), what="the palette")
        await pilot.press(*query)
        palette = app.screen

        def found():
            from textual.command import CommandList

            options = palette.query_one(CommandList).options
            return any(str(o.prompt).startswith(expected) for o in options)

        await wait_until(pilot, found, what=f"{expected} in the palette for {query!r}")


@pytest.mark.slow
def test_a_piped_plain_run_is_saved_only_when_asked(tmp_path, parrot_checkpoint):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent / "src"),
           "CHATTERM_DATA_DIR": str(tmp_path / "data"), "CHATTERM_CONFIG_DIR": str(tmp_path / "config")}

    def run(*flags):
        r = subprocess.run([sys.executable, "-m", "chatterm", str(parrot_checkpoint), "--plain", "--temperature", "0",
                            "--max-new-tokens", "4", *flags], input="hi\n", capture_output=True, text=True,
                           env=env, timeout=120)
        assert r.returncode == 0, r.stderr
        return list((tmp_path / "data" / "conversations").glob("*.json"))

    assert run() == []
    assert len(run("--save")) == 1
    help_text = subprocess.run([sys.executable, "-m", "chatterm", "chat", "--help"], capture_output=True, text=True,
                               env={**env, "COLUMNS": "200"}).stdout
    assert "a piped --plain run is not saved otherwise" in help_text


async def test_passing_notes_stay_out_of_the_transcript_and_undo_says_what_it_undid(parrot_checkpoint):
    from ui_helpers import make_app, notes, ready, settle, type_keys

    from chatterm.ui.chat_view import AssistantMessage, Note, UserMessage

    app = make_app(parrot_checkpoint, max_new_tokens=6)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(app, pilot)
        await type_keys(pilot, "hi")
        await pilot.press("enter")
        await settle(app, pilot)
        app.commands.run("/set temperature 0")
        assert app.status.note == "temperature = 0 (session)"
        await pilot.press("ctrl+r")
        await settle(app, pilot)
        await pilot.press("alt+left")
        await pilot.pause()
        assert app.status.note.startswith("message 2: version 1/2")
        await pilot.press("alt+c")
        await pilot.pause()
        assert app.recent_notes[-1].startswith("copied message 2")
        assert not any(word in n for n in notes(app) for word in ("temperature", "version", "copied"))
        children = list(app.chat.children)  # the question is followed by its answer, nothing between
        question = children.index(app.chat.query(UserMessage).last())
        assert isinstance(children[question + 1], AssistantMessage) and not app.chat.query(Note)
        await pilot.press("ctrl+b")
        await pilot.pause()
        assert app.session.conversation.turns == []
        assert app.recent_notes[-1] == "undid your message “hi” and its reply; /redo puts it back"
        assert [n.message for n in app._notifications][-1] == app.recent_notes[-1]  # too long for the bar: a toast
        await type_keys(pilot, "/redo")
        await pilot.press("enter")
        await pilot.pause()
        assert [t.text for t in app.session.conversation.turns] == ["hi", "hello t"]  # 6 tokens
        assert len(app.chat.query(UserMessage)) == 1 and len(app.chat.query(AssistantMessage)) == 1
        assert app.recent_notes[-1] == "put back your message “hi”"


async def test_before_the_first_token_one_dim_line_and_the_meter_counts_the_message_at_once():
    from remote_servers import Scripted, ScriptedServer
    from ui_helpers import make_app, ready, settle, type_keys

    from chatterm.ui.chat_view import AssistantMessage

    with ScriptedServer([Scripted(body=[b": busy\n\n"], stall=True)]) as server:  # a comment, then silence
        app = make_app(server.url)
        async with app.run_test(size=(100, 30)) as pilot:
            await ready(app, pilot)
            before = app.status.context[0]
            await type_keys(pilot, "a long message " * 4)
            await pilot.press("enter")
            reply = app.chat.query(AssistantMessage).last()
            await wait_until(pilot, lambda: reply.has_class("-waiting"), what="the waiting line")
            await wait_until(pilot, lambda: reply.region.height == 3, what="a frame around one line")
            assert app.busy and "…" in str(reply.query_one("MarkdownParagraph").render())
            assert app.status.context[0] >= before + 15  # counted when sent (an estimate: 1 per 3 chars)
            await pilot.press("escape")
            await settle(app, pilot)
            assert not reply.has_class("-waiting")


async def test_a_code_block_has_one_blank_line_above_it():
    from textual.app import App

    from chatterm.ui.chat_view import AssistantMessage, ChatView

    class Host(App):
        CSS_PATH = "../src/chatterm/ui/app.tcss"

        def compose(self):
            yield ChatView(id="chat")

    app = Host()
    async with app.run_test(size=(60, 20)) as pilot:
        message = AssistantMessage("Here:\n\n```py\nx = 1\n```")
        await app.query_one(ChatView).mount(message)
        await pilot.pause()
        assert message.region.height == 2 + 1 + 1 + 1  # frame, "Here:", one blank line, the code
