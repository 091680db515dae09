"""Slash commands run once, in session.commands, and the plain REPL only renders them: every
command through `PlainChat` with a real tiny model (the TUI's side is in test_ui.py)."""

import io

import pytest

from chatterm.session import ChatSession, Conversation, ConversationStore, parse_command
from chatterm.session.commands import COMMANDS, CommandError, SlashCommands
from chatterm.session.user.config import AppConfig, load_config, save_config
from chatterm.session.user.layered_settings import LayeredSettings
from chatterm.session.backends.local import LocalBackend
from chatterm.repl import PlainChat


@pytest.fixture(scope="module")
def backend(parrot_checkpoint):
    return LocalBackend.load(parrot_checkpoint)


def make_repl(backend, tmp_path, **sampling):
    path = tmp_path / "config.toml"
    save_config(AppConfig(sampling={"temperature": 0, **sampling}), path)  # the user's file
    config = load_config(path)[0]
    layers = LayeredSettings()
    layers.set_layer("config", config.sampling)
    session = ChatSession(backend, layers.live, Conversation(), ConversationStore(tmp_path / "conversations"))
    out, err = io.StringIO(), io.StringIO()
    repl = PlainChat(session, settings=layers, config=config, out=out, err=err,
                     load_backend=lambda path: LocalBackend.load(path))
    return repl, out, err


def test_flags_trail_the_argument():
    assert parse_command("/set top_k 5 --save") .flags == {"--save"}
    assert parse_command("/set top_k 5 --save").arg == "top_k 5"
    assert parse_command("/system keep --save in mind").arg == "keep --save in mind"  # not trailing: text
    assert parse_command("/save x.json --force").flags == {"--force"}
    with pytest.raises(CommandError, match="needs NAME VALUE"):
        parse_command("/set --save")


def test_every_command_has_a_handler():
    assert all(callable(getattr(SlashCommands, f"do_{name}", None)) for name in COMMANDS)


def test_every_command_in_the_repl(backend, parrot_checkpoint, tmp_path):
    repl, out, err = make_repl(backend, tmp_path)
    script = [
        "hi", "/retry", "/undo", "/undo", "how are you?", "/edit", "/system be brief", "/set top-k 7",
        "/set min_p 0.1 --save", "/settings", "hi", f"/save {tmp_path / 'chat.json'}", "/clear", "hi",
        f"/load {tmp_path / 'chat.json'}", f"/export {tmp_path / 'chat.md'}", f"/model {parrot_checkpoint}",
        "/theme chatterm-light", "/help", "/quit", "never read",
    ]
    repl.run(line + "\n" for line in script)
    said, notes = out.getvalue(), err.getvalue()
    assert said.count("hello there, friend") == 2  # hi and its retry (after /system the parrot strays)
    assert "removed" not in notes and "nothing to undo" in notes  # the second /undo had nothing left
    assert "took back: how are you?" in notes
    assert "system prompt: be brief (this session)" in notes and load_config(tmp_path / "config.toml")[0].system_prompt == ""
    assert "top_k = 7 (session)" in notes and "min_p = 0.1 (config) · saved as default" in notes
    assert load_config(tmp_path / "config.toml")[0].sampling == {"temperature": 0, "min_p": 0.1}
    assert "temperature = 0 (config)\ntop_k = 7 (session)" in notes and "top_p = 0.95 (built-in)" in notes
    assert f"saved to {tmp_path / 'chat.json'}" in notes
    assert "new conversation" in notes and "loaded 2 turns" in notes
    assert "**System:** be brief\n\n**User:** hi" in (tmp_path / "chat.md").read_text()
    assert "loaded parrot" in notes and "themes apply to the TUI only" in notes
    assert "/retry: regenerate the last reply" in notes and repl.quit_requested
    assert "never read" not in said


def test_errors_are_one_line_each(backend, tmp_path):
    repl, out, err = make_repl(backend, tmp_path)
    repl.run(["/sett x\n", "/set tempreture 1\n", "/set top_p 7\n", "/load /no/such/file\n", "/model\n"])
    lines = err.getvalue().splitlines()
    assert len(lines) == 5
    assert "did you mean /set" in lines[0] and "did you mean 'temperature'" in lines[1]
    assert "top_p: '7' is out of range" in lines[2] and "/model needs PATH" in lines[4]


def test_the_models_recommendation_is_a_layer_and_a_model_switch_replaces_it(tmp_path, parrot, parrot_checkpoint):
    from helpers import save_tiny_checkpoint

    model, _ = parrot
    rec = save_tiny_checkpoint(tmp_path / "rec", model, name="rec", sampling={"top_k": 3, "repetition_penalty": 1.2})
    repl, out, err = make_repl(LocalBackend.load(rec), tmp_path)
    layers = repl.commands.settings
    assert layers.live.top_k == 3 and layers.source_of("repetition_penalty") == "model"
    repl.run([f"/model {parrot_checkpoint}\n"])  # the parrot recommends nothing
    assert layers.live.top_k == 40 and layers.source_of("top_k") == "built-in"
