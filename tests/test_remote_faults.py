"""The remote backend against a scripted local server: the faults and server shapes that no real
server produces on demand (malformed or cut streams, 429 with Retry-After, stalls, 401, refusals,
llama.cpp's and vLLM's log-probability shapes)."""

from __future__ import annotations

import threading
import time

import pytest
from remote_servers import Scripted, ScriptedServer, chat_chunk, free_port, sse

from chatterm.engine.events import ContextTrimmed, Finished, TextDelta, TokenStep
from chatterm.engine.settings import SamplingSettings
from chatterm.session.chats.conversation import Conversation
from chatterm.session.backends.remote.backend import BackendError, RemoteBackend

KEY = "sk-test-secret-0123456789"


def ask(text="hi", *history) -> Conversation:
    conv = Conversation()
    for i, turn in enumerate(history):
        conv.add("user" if i % 2 == 0 else "assistant", turn)
    conv.add("user", text)
    return conv


def run(backend, conv=None, settings=None, **kwargs):
    events = list(backend.reply(conv or ask(), settings or SamplingSettings(), **kwargs))
    finished = [e for e in events if isinstance(e, Finished)]
    assert len(finished) == 1 and events[-1] is finished[0]
    return events, finished[0]


def shown(events) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def test_chat_reply_streams_and_never_shows_a_split_stop_string():
    body = sse(chat_chunk("Hello"), chat_chunk(" there\nUs"), chat_chunk("er: more"), chat_chunk(None, "stop"))
    with ScriptedServer([Scripted(body=body)]) as server:
        backend = RemoteBackend.open(server.url, mode="completion")
        events, done = run(backend)
    assert shown(events) == "Hello there\n" == done.text
    assert done.stop_reason == "stop" and done.error is None and done.token_ids == ()
    sent = server.requests[0]
    assert server.paths == ["/v1/completions"] and sent["prompt"].endswith("User: hi\nAssistant:")
    assert sent["stop"] == ["User:"] and sent["stream"] is True


def test_a_held_back_tail_is_released_when_the_stream_ends():
    body = sse(chat_chunk("see Us"), chat_chunk(None, "length"))
    with ScriptedServer([Scripted(body=body)]) as server:
        events, done = run(RemoteBackend.open(server.url, mode="completion"))
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["see ", "Us"]
    assert done.text == "see Us" and done.stop_reason == "length"


def test_a_lone_surrogate_from_the_server_becomes_a_replacement_character():
    """JSON can spell "\\ud800": decoded as is, the reply could not be printed or saved."""
    body = sse(chat_chunk("a\ud800b"), chat_chunk(None, "stop"))
    with ScriptedServer([Scripted(body=body)]) as server:
        events, done = run(RemoteBackend.open(server.url, mode="completion"))
    assert done.text == "a\ufffdb" == shown(events)
    done.text.encode("utf-8")


def test_chat_mode_sends_messages_and_the_users_own_stops_only():
    settings = SamplingSettings(stop=["END"], seed=7, max_new_tokens=9)
    with ScriptedServer([Scripted(body=sse(chat_chunk("ok"), chat_chunk(None, "stop")))]) as server:
        conv = ask("and you?", "hi", "hello")
        conv.system = "be brief"
        _, done = run(RemoteBackend.open(server.url, mode="chat"), conv, settings)
    sent = server.requests[0]
    assert server.paths == ["/v1/chat/completions"] and done.stop_reason == "eos"
    assert sent["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                                {"role": "assistant", "content": "hello"}, {"role": "user", "content": "and you?"}]
    assert sent["stop"] == ["END"] and sent["seed"] == 7 and sent["max_tokens"] == 9
    assert len(conv.turns) == 3  # the backend never appends the reply


def test_logprobs_in_the_chat_shape_become_token_steps():
    logprobs = {"content": [{"token": " A", "logprob": -0.1, "id": 5,
                             "top_logprobs": [{"token": " B", "logprob": -3.0, "id": 6},
                                              {"token": " A", "logprob": -0.1, "id": 5}]}]}
    body = sse(chat_chunk(" A", logprobs=logprobs), chat_chunk(None, "stop"))
    with ScriptedServer([Scripted(body=body)]) as server:
        backend = RemoteBackend.open(server.url, mode="chat")
        events, _ = run(backend, inspect=2)
    steps = [e for e in events if isinstance(e, TokenStep)]
    assert len(steps) == 1 and steps[0].token_id == 5 and steps[0].text == " A"
    assert [c[1] for c in steps[0].candidates] == [" A", " B"] and steps[0].prob == pytest.approx(0.905, abs=1e-3)
    assert server.requests[0]["logprobs"] is True and server.requests[0]["top_logprobs"] == 2
    assert backend.inspector_note is None


def test_logprobs_in_the_completion_shape_without_ids():
    logprobs = {"tokens": [" x", " y"], "token_logprobs": [-0.5, -1.0],
                "top_logprobs": [{" x": -0.5, " z": -1.2}, {" q": -0.9, " y": -1.0}]}
    body = sse({"choices": [{"index": 0, "text": " x y", "logprobs": logprobs, "finish_reason": None}]},
               {"choices": [{"index": 0, "text": "", "finish_reason": "length"}]})
    with ScriptedServer([Scripted(body=body)]) as server:
        events, done = run(RemoteBackend.open(server.url, mode="completion"), inspect=2)
    steps = [e for e in events if isinstance(e, TokenStep)]
    assert [s.text for s in steps] == [" x", " y"] and [s.index for s in steps] == [0, 1]
    for step in steps:  # ids are made up, but the chosen token is still told apart by id
        chosen = [c for c in step.candidates if c[0] == step.token_id]
        assert len(chosen) == 1 and chosen[0][1] == step.text
    assert server.requests[0]["logprobs"] == 2 and done.new_tokens == 2


def test_a_server_without_logprobs_is_noted():
    with ScriptedServer([Scripted(body=sse(chat_chunk("hi"), chat_chunk(None, "stop")))]) as server:
        backend = RemoteBackend.open(server.url, mode="chat")
        events, _ = run(backend, inspect=3)
    assert not [e for e in events if isinstance(e, TokenStep)]
    assert backend.inspector_note == "the server gives no token probabilities"


def test_usage_figures_count_tokens():
    body = sse(chat_chunk("a"), chat_chunk("b"), chat_chunk(None, "stop"),
               {"choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": 7,
                                         "prompt_tokens_details": {"cached_tokens": 30}}})
    with ScriptedServer([Scripted(body=body)]) as server:
        _, done = run(RemoteBackend.open(server.url, mode="chat"))
    assert (done.prompt_tokens, done.prefill_tokens, done.new_tokens) == (40, 10, 7)


@pytest.mark.parametrize("body, message", [
    (sse(chat_chunk("par"), "{not json"), "malformed event"),
    (sse(chat_chunk("par"), done=False), "ended before the reply was finished"),
    (sse(chat_chunk("par"), {"error": {"message": "CUDA out of memory"}}), "failed mid-reply: CUDA out of memory"),
    (sse(chat_chunk("par"), {"choices": "nope"}), "malformed reply"),
])
def test_broken_streams_end_in_one_line_and_keep_the_partial_text(body, message):
    with ScriptedServer([Scripted(body=body)]) as server:
        events, done = run(RemoteBackend.open(server.url, mode="chat"))
    assert done.stop_reason == "error" and message in done.error and "\n" not in done.error
    assert done.text == "par" == shown(events)


def test_429_with_retry_after_is_honoured_once():
    busy = Scripted(429, json_body={"error": {"message": "slow down"}}, headers={"Retry-After": "0.3"})
    with ScriptedServer([busy, Scripted(body=sse(chat_chunk("ok"), chat_chunk(None, "stop")))]) as server:
        started = time.monotonic()
        _, done = run(RemoteBackend.open(server.url, mode="chat"))
    assert done.text == "ok" and done.error is None and len(server.requests) == 2
    assert time.monotonic() - started >= 0.3


def test_a_second_429_is_reported():
    busy = Scripted(429, json_body={"error": {"message": "slow down"}}, headers={"Retry-After": "0"})
    with ScriptedServer([busy]) as server:
        _, done = run(RemoteBackend.open(server.url, mode="chat"))
    assert len(server.requests) == 2 and done.stop_reason == "error"
    assert done.error == "the server is busy (429): slow down; try again shortly"


def test_5xx_without_retry_after_is_one_line():
    with ScriptedServer([Scripted(503, json_body={"detail": "model is\nloading"})]) as server:
        _, done = run(RemoteBackend.open(server.url, mode="chat"))
    assert done.error == "server error (503): model is loading" and len(server.requests) == 1


def test_api_key_from_env_is_sent_but_never_shown(monkeypatch):
    monkeypatch.setenv("MY_KEY", KEY)
    refused = Scripted(401, json_body={"error": {"message": f"invalid key {KEY}"}})
    with ScriptedServer([refused]) as server:
        backend = RemoteBackend.open(server.url, api_key_env="MY_KEY", mode="chat")
        _, done = run(backend)
    assert server.headers[0]["Authorization"] == f"Bearer {KEY}"
    assert done.stop_reason == "error" and KEY not in done.error and "401" in done.error and "***" in done.error


def test_openai_api_key_is_used_and_a_missing_env_var_is_one_line(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with ScriptedServer([]) as server:
        RemoteBackend.open(server.url)
        assert server.headers[0]["Authorization"] == f"Bearer {KEY}"
        with pytest.raises(BackendError, match="--api-key-env NOPE_NOT_SET: that environment variable is not set"):
            RemoteBackend.open(server.url, api_key_env="NOPE_NOT_SET")


def test_model_choice():
    many = {"data": [{"id": "a"}, {"id": "b"}]}
    with ScriptedServer([], models=many) as server:
        with pytest.raises(BackendError, match=r"serves 2 models; pick one with --remote-model NAME: a, b$"):
            RemoteBackend.open(server.url)
        with pytest.raises(BackendError, match=r"has no model 'c'; it serves: a, b$"):
            RemoteBackend.open(server.url, model="c")
        assert RemoteBackend.open(server.url, model="b").info.name == "b"
    with ScriptedServer([]) as server:
        backend = RemoteBackend.open(server.url.removesuffix("/v1"))  # the /v1 is optional
        assert backend.info.name == "scripted" and backend.info.source == server.url.removesuffix("/v1")


def test_open_faults_are_one_line():
    with pytest.raises(BackendError, match=r"connection refused\): is the server running\?$"):
        RemoteBackend.open(f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(BackendError, match="DNS lookup failed"):
        RemoteBackend.open("http://no-such-host.invalid/v1")
    with pytest.raises(BackendError, match="not a server address"):
        RemoteBackend.open("ftp://example.com")
    with ScriptedServer([], models={"nothing": 1}) as server:
        with pytest.raises(BackendError, match="did not list models"):
            RemoteBackend.open(server.url)


def test_tls_error_is_one_line():
    with ScriptedServer([]) as server:  # https to a plain-http server: the handshake fails
        with pytest.raises(BackendError) as caught:
            RemoteBackend.open(server.url.replace("http://", "https://"))
    assert str(caught.value).startswith("TLS error talking to https://127.0.0.1") and "\n" not in str(caught.value)


def test_plain_http_to_another_host_warns():
    from chatterm.session.backends.remote.http import ServerAddress

    assert "unencrypted" in ServerAddress.parse("http://10.1.2.3:8000/v1").insecure_warning()
    for url in ("http://localhost:8080/v1", "http://127.0.0.2:1/v1", "http://[::1]:8000", "https://gpu.example/v1"):
        assert ServerAddress.parse(url).insecure_warning() is None


def _cancel_after_first_text(backend, conv, settings=None):
    """Set cancel once text arrives; return (events, seconds from cancel to Finished)."""
    cancel = threading.Event()
    events, cancelled_at = [], None
    for event in backend.reply(conv, settings or SamplingSettings(), cancel=cancel):
        events.append(event)
        if isinstance(event, TextDelta) and cancelled_at is None:
            threading.Timer(0.05, cancel.set).start()
            cancelled_at = time.monotonic() + 0.05
    return events, time.monotonic() - cancelled_at


def test_cancel_is_prompt_while_the_server_stalls():
    with ScriptedServer([Scripted(body=sse(chat_chunk("par"), done=False), stall=True)]) as server:
        backend = RemoteBackend.open(server.url, mode="chat")
        events, latency = _cancel_after_first_text(backend, ask())
    assert events[-1].stop_reason == "cancelled" and events[-1].text == "par"
    assert latency < 0.1


def test_cancel_before_any_byte_arrives():
    with ScriptedServer([Scripted(body=[], stall=True)]) as server:
        backend = RemoteBackend.open(server.url, mode="chat")
        cancel = threading.Event()
        threading.Timer(0.1, cancel.set).start()
        started = time.monotonic()
        _, done = run(backend, cancel=cancel)
        took = time.monotonic() - started
    assert done.stop_reason == "cancelled" and took < 0.2


def test_read_timeout_is_one_line():
    with ScriptedServer([Scripted(body=sse(chat_chunk("par"), done=False), stall=True)]) as server:
        backend = RemoteBackend.open(server.url, mode="chat", timeout=0.3)
        _, done = run(backend)
    assert done.stop_reason == "error" and done.text == "par"
    assert done.error.endswith("sent nothing for 0.3 s (read timeout); the server may be overloaded")


def test_prompt_too_long_drops_old_turns_and_retries_once():
    too_long = Scripted(400, json_body={"object": "error", "message": "This model's maximum context length is "
                                        "2048 tokens. However, you requested 3000 tokens."})
    ok = Scripted(body=sse(chat_chunk("ok"), chat_chunk(None, "stop")))
    with ScriptedServer([too_long, ok]) as server:
        backend = RemoteBackend.open(server.url, mode="chat")
        conv = ask("last", "one", "two", "three", "four")
        events, done = run(backend, conv)
    trimmed = [e for e in events if isinstance(e, ContextTrimmed)]
    assert done.text == "ok" and len(trimmed) == 1 and trimmed[0].dropped_turns == 2
    assert conv.context_start == 2 and len(server.requests[1]["messages"]) == 3
    assert backend.info.context_window == 2048  # learnt from the message
    with ScriptedServer([too_long]) as server:
        backend = RemoteBackend.open(server.url, mode="chat")
        _, done = run(backend, ask("alone"))
    assert done.stop_reason == "error" and "too long for the server's context window" in done.error


def test_refused_extension_fields_are_dropped_and_reported():
    refusal = Scripted(422, json_body={"detail": "Unexpected fields in the request: {'top_k', 'min_p'}"})
    ok = Scripted(body=sse(chat_chunk("ok"), chat_chunk(None, "stop")))
    with ScriptedServer([refusal, ok]) as server:
        backend = RemoteBackend.open(server.url, mode="chat")
        assert backend.supported_settings["top_k"] is None
        _, done = run(backend)
    assert done.text == "ok"
    assert "top_k" in server.requests[0] and "top_k" not in server.requests[1] and "min_p" not in server.requests[1]
    assert "repetition_penalty" in server.requests[1]
    support = backend.supported_settings
    assert support["top_k"].startswith("the server refused it") and support["temperature"] is None
    assert support["repetition_penalty"] is None and support["repetition_window"]


def test_a_model_without_chat_template_falls_back_to_completion():
    refusal = Scripted(400, json_body={"error": {"message": "Cannot use chat template functions because "
                                                 "tokenizer.chat_template is not set"}})
    ok = Scripted(body=sse({"choices": [{"text": " fine", "finish_reason": "stop"}]}))
    with ScriptedServer([refusal, ok]) as server:
        backend = RemoteBackend.open(server.url)
        _, done = run(backend)
    assert server.paths == ["/v1/chat/completions", "/v1/completions"] and done.text == " fine"
    assert backend.mode == "completion" and "completion mode" in backend.warnings[0]


def test_settings_changed_while_streaming_apply_to_the_next_request():
    body = sse(chat_chunk("a"), chat_chunk("b"), chat_chunk(None, "stop"))
    settings = SamplingSettings(temperature=0.5)
    with ScriptedServer([Scripted(body=body)]) as server:
        backend = RemoteBackend.open(server.url, mode="chat")
        for event in backend.reply(ask(), settings):
            settings.temperature = 1.5
        run(backend, settings=settings)
    assert [r["temperature"] for r in server.requests] == [0.5, 1.5]


def test_llama_cpp_probe_window_template_tokenize_and_field_names():
    props = {"default_generation_settings": {"n_ctx": 1024}, "chat_template": ""}
    tokenize = {"/tokenize": lambda body: {"tokens": list(range(len(body["content"]) // 4 + 1))}}
    body = sse({"choices": [{"text": " yes", "finish_reason": "stop"}]})
    with ScriptedServer([Scripted(body=body)], routes={"/props": props, **tokenize}) as server:
        backend = RemoteBackend.open(server.url, model="scripted")
        assert (backend.facts.kind, backend.mode, backend.info.context_window) == ("llama.cpp", "completion", 1024)
        conv = ask("hello there")
        assert backend.context_tokens(conv, SamplingSettings()) == 6 and backend.context_is_estimate  # 18 chars / 3
        run(backend, conv, SamplingSettings(repetition_window=0, repetition_penalty=1.3))
        assert backend.context_tokens(conv, SamplingSettings()) == 5 and not backend.context_is_estimate
    sent = server.requests[0]
    assert sent["repeat_penalty"] == 1.3 and sent["repeat_last_n"] == -1 and "repetition_penalty" not in sent
    assert backend.supported_settings["repetition_window"] is None


def test_ollama_and_vllm_are_recognised():
    with ScriptedServer([], routes={"/api/version": {"version": "0.5"}}) as server:
        backend = RemoteBackend.open(server.url)
    assert backend.facts.kind == "ollama" and "Ollama" in backend.supported_settings["top_k"]
    vllm = {"data": [{"id": "m", "owned_by": "vllm", "max_model_len": 8192}]}
    with ScriptedServer([], models=vllm) as server:
        backend = RemoteBackend.open(server.url)
    assert backend.facts.kind == "vllm" and backend.info.context_window == 8192
    assert backend.supported_settings["repetition_window"] and backend.supported_settings["min_p"] is None


def test_context_estimate_fits_the_window():
    with ScriptedServer([Scripted(body=sse(chat_chunk("ok"), chat_chunk(None, "stop")))]) as server:
        backend = RemoteBackend.open(server.url, mode="chat", context_window=64)
        conv = ask("now", "x" * 90, "y" * 90, "z" * 90, "w" * 90)
        events, done = run(backend, conv, SamplingSettings(max_new_tokens=16))
    assert isinstance(events[0], ContextTrimmed) and conv.context_start == 4
    assert [m["content"] for m in server.requests[0]["messages"]] == ["now"]
    assert backend.context_is_estimate and backend.info.context_window == 64


def test_a_bare_500_from_the_chat_route_tries_completion_and_reports_chat_if_both_fail():
    bare = Scripted(500, body=[b"Internal Server Error"], headers={"Content-Type": "text/plain"})
    with ScriptedServer([bare, Scripted(404, json_body={"detail": "Not Found"})]) as server:
        backend = RemoteBackend.open(server.url)
        _, done = run(backend)
    assert server.paths == ["/v1/chat/completions", "/v1/completions"]
    assert done.error == "server error (500): Internal Server Error" and backend.mode == "chat"
    assert backend.warnings == []
    ok = Scripted(body=sse(chat_chunk("ok"), chat_chunk(None, "stop")))
    with ScriptedServer([ok, bare]) as server:  # once chat has worked, a 500 is just a 500
        backend = RemoteBackend.open(server.url)
        run(backend)
        _, done = run(backend)
    assert server.paths == ["/v1/chat/completions"] * 2 and done.error.startswith("server error (500)")


def test_complete_stream_continues_a_plain_prompt():
    body = sse({"choices": [{"text": " upon a", "finish_reason": None}]},
               {"choices": [{"text": " time", "finish_reason": "length"}]})
    with ScriptedServer([Scripted(body=body)]) as server:
        backend = RemoteBackend.open(server.url, mode="chat")
        events = list(backend.complete_stream("Once", SamplingSettings(stop=["END"])))
    assert server.paths == ["/v1/completions"] and server.requests[0]["prompt"] == "Once"
    assert server.requests[0]["stop"] == ["END"] and events[-1].text == " upon a time"


@pytest.mark.parametrize("status, body, expected", [
    (404, {"error": {"message": "The model `scripted` does not exist.", "code": 404}},
     "the server has no model 'scripted' (404): The model `scripted` does not exist."),
    (403, {"error": "forbidden"}, "the server said 403 (forbidden): it wants an API key: set OPENAI_API_KEY or "
     "pass --api-key-env VAR"),
    (400, {"error": {"message": "temperature must be at most 2"}},
     "the server refused the request (400): temperature must be at most 2"),
])
def test_http_errors_in_a_reply_are_one_line(status, body, expected, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with ScriptedServer([Scripted(status, json_body=body)]) as server:
        _, done = run(RemoteBackend.open(server.url, mode="chat"))
    assert done.stop_reason == "error" and done.error == expected and done.text == ""


def test_llama_cpp_context_message_counts_as_too_long_but_other_400s_do_not():
    llama = Scripted(400, json_body={"error": {"code": 400, "type": "exceed_context_size_error",
                                               "message": "the request exceeds the available context size, try increasing it"}})
    ok = Scripted(body=sse(chat_chunk("ok"), chat_chunk(None, "stop")))
    with ScriptedServer([llama, ok]) as server:
        events, done = run(RemoteBackend.open(server.url, mode="chat"), ask("c", "a", "b"))
    assert done.text == "ok" and isinstance(events[0], ContextTrimmed)
    with ScriptedServer([Scripted(400, json_body={"error": "temperature exceeds 2"})]) as server:
        events, done = run(RemoteBackend.open(server.url, mode="chat"), ask("c", "a", "b"))
    assert len(server.requests) == 1 and not any(isinstance(e, ContextTrimmed) for e in events)


def test_a_server_that_does_not_stream_still_answers():
    whole = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "all at once"},
                          "finish_reason": "stop"}], "usage": {"prompt_tokens": 5, "completion_tokens": 3}}
    with ScriptedServer([Scripted(json_body=whole)]) as server:
        events, done = run(RemoteBackend.open(server.url, mode="chat"))
    assert shown(events) == "all at once" == done.text and done.new_tokens == 3 and done.error is None


def test_remote_flags_with_a_checkpoint_and_a_dead_server_are_one_line_exit_2(tmp_path):
    import os
    import subprocess
    import sys

    def chatterm(*args):
        return subprocess.run([sys.executable, "-m", "chatterm", *args], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "OPENAI_API_KEY": KEY})

    r = chatterm("generate", str(tmp_path), "--prompt", "x", "--remote-model", "m")
    assert r.returncode == 2 and "are for a server address" in r.stderr and len(r.stderr.splitlines()) == 1
    r = chatterm("generate", f"http://127.0.0.1:{free_port()}/v1", "--prompt", "x")
    assert r.returncode == 2 and r.stderr.strip().endswith("(connection refused): is the server running?")
    assert len(r.stderr.splitlines()) == 1 and KEY not in r.stderr
