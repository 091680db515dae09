"""The remote backend against a real OpenAI-compatible server: `transformers serve` on 127.0.0.1,
serving a tiny Llama made here whose replies are fixed (see remote_servers.make_bigram_model).
One server per module, killed at teardown (the kill test kills it early; it runs last)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from remote_servers import CHAT_REPLY, COMPLETION_REPLY, TransformersServer, make_bigram_model

from chatterm.engine.events import Finished, TextDelta
from chatterm.engine.settings import SamplingSettings
from chatterm.session.chats.conversation import Conversation
from chatterm.session.backends.remote.backend import BackendError, RemoteBackend
from chatterm.session.prompts.template import ChatTemplate

pytest.importorskip("fastapi", reason="transformers[serving] is not installed")
pytestmark = pytest.mark.slow

LOOP = ChatTemplate(assistant_prefix="Loop:", stop=())  # the model says " la" forever after it


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return make_bigram_model(tmp_path_factory.mktemp("served") / "bigram")


@pytest.fixture(scope="module")
def module_server(model_folder, tmp_path_factory):
    served = TransformersServer(model_folder, tmp_path_factory.mktemp("log") / "serve.log").start()
    yield served
    served.stop()


@pytest.fixture
def server(module_server):
    """The module's server, started again if a test killed it (the kill test runs last anyway)."""
    if module_server.process.poll() is not None:
        module_server.start()
    return module_server


def ask(text="hi") -> Conversation:
    conv = Conversation()
    conv.add("user", text)
    return conv


def reply(backend, conv=None, settings=None, **kwargs) -> tuple[list, Finished]:
    events = list(backend.reply(conv or ask(), settings or SamplingSettings(temperature=0), **kwargs))
    assert isinstance(events[-1], Finished) and sum(isinstance(e, Finished) for e in events) == 1
    return events, events[-1]


def test_chat_turn(server, model_folder):
    backend = RemoteBackend.open(server.url)
    assert backend.mode == "chat" and backend.facts.model == str(model_folder) and backend.info.name == model_folder.name
    conv = ask()
    events, done = reply(backend, conv, inspect=3)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == CHAT_REPLY == done.text
    assert done.stop_reason == "eos" and done.error is None and done.new_tokens == 4
    assert len(conv.turns) == 1  # the backend never appends
    # transformers serve refuses the extension fields (422) and ignores logprobs: both are learnt.
    assert backend.supported_settings["top_k"].startswith("the server refused it")
    assert backend.supported_settings["temperature"] is None
    assert backend.inspector_note == "the server gives no token probabilities"


def test_completion_turn_stops_at_user(server):
    backend = RemoteBackend.open(server.url, mode="completion")
    events, done = reply(backend, settings=SamplingSettings())  # sampled: the margins make it certain
    assert done.text == COMPLETION_REPLY and done.stop_reason == "stop"
    assert "User" not in "".join(e.text for e in events if isinstance(e, TextDelta))


def test_cancel_ends_a_streaming_reply_within_100ms(server):
    backend = RemoteBackend.open(server.url, mode="completion", template=LOOP)
    cancel = threading.Event()
    cancelled_at = None
    events = []
    for event in backend.reply(ask(), SamplingSettings(temperature=0, max_new_tokens=4000), cancel=cancel):
        events.append(event)
        if isinstance(event, TextDelta) and cancelled_at is None:
            cancel.set()
            cancelled_at = time.monotonic()
    latency = time.monotonic() - cancelled_at
    done = events[-1]
    assert done.stop_reason == "cancelled" and done.text.startswith(" la") and latency < 0.1


def test_wrong_model_name(server):
    with pytest.raises(BackendError, match=r"has no model 'nope'; it serves: .*bigram$"):
        RemoteBackend.open(server.url, model="nope")


def chatterm(*args, stdin=""):
    return subprocess.run([sys.executable, "-m", "chatterm", *args], input=stdin, capture_output=True, text=True,
                          timeout=120)


def test_command_line_plain_chat_generate_and_errors(server):
    r = chatterm(server.url, "--plain", "--temperature", "0", stdin="hi\nhow are you?\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == CHAT_REPLY.split() * 2 and r.stderr == ""
    r = chatterm("generate", server.url, "--prompt", "Loop:", "--max-new-tokens", "3")
    assert r.returncode == 0 and r.stdout == " la la la\n"
    r = chatterm("generate", server.url, "--chat", "--remote-mode", "completion", "--prompt", "hi", "--stats")
    assert r.returncode == 0, r.stderr
    assert r.stdout == COMPLETION_REPLY.strip() + "\n" and "stop: stop" in r.stderr  # a chat reply is trimmed
    r = chatterm(server.url, "--plain", "--remote-model", "nope")
    assert r.returncode == 2 and "has no model 'nope'" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_auto_mode_uses_completion_for_a_model_without_chat_template(tmp_path):
    folder = make_bigram_model(tmp_path / "base", chat_template=False)
    served = TransformersServer(folder, tmp_path / "serve.log").start()
    try:
        backend = RemoteBackend.open(served.url)
        assert backend.mode == "chat"  # transformers serve does not say; the first reply finds out
        _, done = reply(backend)
    finally:
        served.stop()
    assert backend.mode == "completion" and done.text == COMPLETION_REPLY and done.stop_reason == "stop"
    assert "completion mode" in backend.warnings[0]


def test_server_killed_mid_reply(server):
    backend = RemoteBackend.open(server.url, mode="completion", template=LOOP)
    events = []
    for event in backend.reply(ask(), SamplingSettings(temperature=0, max_new_tokens=4000)):
        events.append(event)
        if isinstance(event, TextDelta) and server.process.poll() is None:
            server.stop()
    done = events[-1]
    assert done.stop_reason == "error" and "\n" not in done.error and done.text.startswith(" la")
    assert "broke mid-reply" in done.error or "ended before the reply was finished" in done.error
    with pytest.raises(BackendError, match=r"connection refused\): is the server running\?$"):
        RemoteBackend.open(server.url)
