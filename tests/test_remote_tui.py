"""The TUI on a server and with model-opening options: what the app shows about its backend.
Fault cases come from the scripted server (tests/remote_servers.py); a real model runs locally."""

import os
import subprocess
import sys

from rich.console import Console

from chatterm.session.user.config import AppConfig
from chatterm.ui.app import ChatApp
from chatterm.ui.chat_view import AssistantMessage, Note
from helpers import save_tiny_checkpoint, tiny_model, wait_until
from remote_servers import Scripted, ScriptedServer, chat_chunk, sse


def make_app(spec, **backend_options):
    config = AppConfig()
    config.sampling.update({"temperature": 0})
    return ChatApp(config, str(spec), [], backend_options=backend_options or None)


def shown(widget) -> str:
    console = Console(width=200, record=True)
    console.print(widget.render())
    return console.export_text()


async def loaded(app, pilot):
    await app.workers.wait_for_complete()
    await wait_until(pilot, lambda: app.session.backend is not None and app.status.busy == "", what="the backend")


async def test_the_tui_opens_models_with_the_command_lines_options(tmp_path):
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny", tiny_model(seed=0))
    app = make_app(checkpoint, context=64)  # chatterm CKPT --context 64
    async with app.run_test(size=(100, 30)) as pilot:
        await loaded(app, pilot)
        assert app.session.backend.info.context_window == 64
        assert app.status.context[1] == 64
        assert app.settings_panel.border_title == "Settings"  # local: changes act on the next token


async def test_a_server_that_refuses_settings_and_gives_no_probabilities(tmp_path):
    refusal = Scripted(422, json_body={"detail": "Unexpected fields in the request: {'top_k'}"})
    ok = Scripted(body=sse(chat_chunk("fine"), chat_chunk(None, "stop")))
    with ScriptedServer([refusal, ok]) as server:
        app = make_app(server.url, mode="chat", device="cpu")  # a local option: ignored by a server
        async with app.run_test(size=(100, 30)) as pilot:
            await loaded(app, pilot)
            load_note = app.recent_notes[-1]  # a passing note: the status bar's
            assert "loaded scripted (window" in load_note and "parameters" not in load_note
            assert "next reply" in app.settings_panel.border_title
            app.send("hi")
            await wait_until(pilot, lambda: not app.busy and app.chat.query(AssistantMessage), what="the reply")
            await app.workers.wait_for_complete()
            await wait_until(pilot, lambda: app.query_one("#set-top_k").has_class("-unsupported"), what="greying")
            assert "the server refused it" in str(app.query_one("#set-top_k").tooltip)
            assert not app.query_one("#set-temperature").has_class("-unsupported")
            assert "the server gives no token probabilities" in shown(app.inspector)
            assert "~" in shown(app.status)  # the scripted server cannot count tokens: an estimate


async def test_a_server_switching_to_completion_mode_says_so_in_the_chat():
    refusal = Scripted(400, json_body={"error": {"message": "Cannot use chat template functions because "
                                                 "tokenizer.chat_template is not set"}})
    ok = Scripted(body=sse({"choices": [{"text": " fine", "finish_reason": "stop"}]}))
    with ScriptedServer([refusal, ok]) as server:
        app = make_app(server.url)
        async with app.run_test(size=(100, 30)) as pilot:
            await loaded(app, pilot)
            app.send("hi")
            await wait_until(pilot, lambda: any("completion mode" in str(n.render()) for n in app.chat.query(Note)),
                             what="the warning")


def test_the_config_names_the_api_key_variable_never_the_key(tmp_path, monkeypatch):
    from chatterm.session.user.config import load_config, save_config

    path = tmp_path / "config.toml"
    path.write_text('api_key_env = "MY_SERVER_KEY"\n')
    config, problems = load_config(path)
    assert config.api_key_env == "MY_SERVER_KEY" and not problems
    save_config(config)
    assert load_config(path)[0].api_key_env == "MY_SERVER_KEY"
    path.write_text('api_key_env = "sk-abc123-secret"\n')
    config, problems = load_config(path)
    assert config.api_key_env is None and "the name of an environment variable" in problems[0]
    assert "sk-abc123" not in problems[0]
    with ScriptedServer([Scripted(body=sse(chat_chunk("ok"), chat_chunk(None, "stop")))]) as server:
        monkeypatch.setenv("MY_SERVER_KEY", "sk-from-env")
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        path.write_text(f'api_key_env = "MY_SERVER_KEY"\nmodel = "{server.url}"\n')
        result = subprocess.run([sys.executable, "-m", "chatterm", "--config", str(path), "--plain"], input="hi\n",
                                capture_output=True, text=True, timeout=60, env={**os.environ})
        assert result.returncode == 0, result.stderr
        sent = [{k.lower(): v for k, v in h.items()}.get("authorization") for h in server.headers]
        assert "Bearer sk-from-env" in sent
        assert "sk-from-env" not in result.stdout + result.stderr


async def test_loading_a_model_file_shows_progress_in_the_status_bar(tmp_path):
    from tiny_llama import hf_model, write_gguf

    gguf_file = write_gguf(tmp_path / "m.gguf", hf_model("llama"))
    app = make_app(gguf_file)
    seen = []
    async with app.run_test(size=(100, 30)) as pilot:
        await loaded(app, pilot)
        app.watch(app.status, "busy", lambda text: seen.append(text))
        app.commands.run(f"/model {gguf_file}")  # watched from the start this time
        await wait_until(pilot, lambda: len(seen) > 1 and seen[-1] == "", what="the second load")  # [0]: the value then
    assert any(text.startswith("loading reading weights") and text.endswith("%") for text in seen), seen
    assert seen[-1] == "", seen
