"""Hostile servers, real ones on 127.0.0.1 (tests/remote_servers.py): bodies, lines and events far
past chatterm's caps, gzip bombs, a server that ignores max_tokens, answers and headers dripped a
byte at a time, and an API key echoed back in every spelling. Each ends in one line, in bounded
time and memory, with the partial reply kept and the key never shown. Every hostile body ends by
itself (a few times past its cap), so a failing test neither hangs nor fills the machine."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
import time
import tracemalloc
import zlib
from urllib.parse import quote

import pytest
from remote_servers import MODELS, Scripted, ScriptedServer, chat_chunk, drip, endless, gzip_bomb, sse

from chatterm.engine.events import Finished, TextDelta
from chatterm.engine.settings import SamplingSettings
from chatterm.session.backends.remote import server_limits
from chatterm.session.chats.conversation import Conversation
from chatterm.session.backends.remote.backend import BackendError, RemoteBackend
from chatterm.session.backends.remote.server_limits import MAX_ERROR_BODY_BYTES, MAX_JSON_BYTES, MAX_SSE_EVENT_BYTES

JSON = {"Content-Type": "application/json"}


def run(backend, settings=None, cancel=None):
    conv = Conversation()
    conv.add("user", "hi")
    events = list(backend.reply(conv, settings or SamplingSettings(), cancel=cancel))
    assert isinstance(events[-1], Finished) and sum(isinstance(e, Finished) for e in events) == 1
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == events[-1].text
    return events[-1]


def peak_bytes(action) -> int:
    """The most memory Python held at once while `action()` ran (every thread)."""
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def raises_backend_error(action) -> str:
    with pytest.raises(BackendError) as caught:
        action()
    message = str(caught.value)
    assert "\n" not in message
    return message


# -- caps on bodies, lines and events -----------------------------------------------------------


def test_an_endless_model_list_is_cut_at_the_json_cap():
    listing = [b'{"object": "list", "data": ['] + endless(b'{"id": "m", "object": "model"}, ' * 1024, 3 * MAX_JSON_BYTES)
    with ScriptedServer([], models=Scripted(body=listing, headers=JSON)) as server:
        started = time.monotonic()
        message = raises_backend_error(lambda: RemoteBackend.open(server.url))
    assert message == f"the server's answer at {server.url}/models is larger than 8 MB; chatterm stopped reading it"
    assert time.monotonic() - started < 10


def test_a_gzip_bomb_is_inflated_a_piece_at_a_time_up_to_the_cap():
    """128 MB of zeros in 128 KB of gzip: httpx alone inflates each network read whole (64 MB)."""
    bomb = Scripted(body=[gzip_bomb(16 * MAX_JSON_BYTES)], headers={**JSON, "Content-Encoding": "gzip"})
    with ScriptedServer([], models=bomb) as server:
        found = []
        peak = peak_bytes(lambda: found.append(raises_backend_error(lambda: RemoteBackend.open(server.url))))
    assert found == [f"the server's answer at {server.url}/models is larger than 8 MB; chatterm stopped reading it"]
    assert peak < 2 * MAX_JSON_BYTES


def test_a_compressed_stream_is_read_and_an_unasked_encoding_is_one_line():
    body = gzip.compress(b"".join(sse(chat_chunk("zipped"), chat_chunk(None, "stop"))))
    with ScriptedServer([Scripted(body=[body], headers={"Content-Encoding": "gzip"})]) as server:
        done = run(RemoteBackend.open(server.url, mode="chat"))
    assert done.text == "zipped" and done.error is None
    assert server.headers[-1]["Accept-Encoding"] == "gzip, deflate"
    with ScriptedServer([Scripted(body=[b"\x8b\x00junk"], headers={"Content-Encoding": "br"})]) as server:
        done = run(RemoteBackend.open(server.url, mode="chat"))
    assert done.error == "the server answered in an encoding chatterm did not ask for (br)"


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw deflate"])
def test_a_long_compressed_stream_is_read_whole(encoding):
    """Many events, inflated 64 KB at a time across network reads of any size."""
    words = [f" w{i}" for i in range(20_000)]
    events = b"".join(sse(*[chat_chunk(w) for w in words], chat_chunk(None, "stop")))
    wbits = {"gzip": 31, "deflate": 15, "raw deflate": -15}[encoding]
    z = zlib.compressobj(6, zlib.DEFLATED, wbits)
    body = z.compress(events) + z.flush()
    header = {"Content-Encoding": encoding.split()[-1]}
    with ScriptedServer([Scripted(body=[body[i:i + 1000] for i in range(0, len(body), 1000)], headers=header)]) as server:
        done = run(RemoteBackend.open(server.url, mode="chat"), SamplingSettings(max_new_tokens=len(words)))
    assert done.text == "".join(words) and done.error is None


def test_an_endless_error_body_is_read_only_to_its_cap():
    body = endless(b"overloaded " * 4096, 32 * 1024 * 1024)
    with ScriptedServer([Scripted(503, body=body, headers={"Content-Type": "text/plain"})]) as server:
        backend = RemoteBackend.open(server.url, mode="chat")
        done = []
        peak = peak_bytes(lambda: done.append(run(backend)))
    error = done[0].error
    assert error.startswith("server error (503): overloaded overloaded") and error.endswith("…")
    assert len(error) < 300 and "\n" not in error and done[0].text == ""
    assert peak < 8 * MAX_ERROR_BODY_BYTES + 4 * 1024 * 1024  # the cap and httpx's own buffers, not 32 MB


def test_an_endless_sse_line_is_cut_and_the_partial_reply_kept():
    body = sse(chat_chunk("par"), done=False) + [b'data: {"choices": [{"delta": {"content": "']
    body += endless(b"la " * 4096, 3 * MAX_SSE_EVENT_BYTES)
    with ScriptedServer([Scripted(body=body)]) as server:
        backend = RemoteBackend.open(server.url, mode="chat")
        done = []
        peak = peak_bytes(lambda: done.append(run(backend)))
    assert done[0].text == "par" and done[0].stop_reason == "error"
    assert done[0].error == "a line from the server is longer than 1 MB; chatterm stopped reading"
    assert peak < 4 * MAX_SSE_EVENT_BYTES


def test_an_endless_event_of_short_lines_is_cut():
    body = sse(chat_chunk("par"), done=False) + endless(b"data: la\n" * 4096, 4 * MAX_SSE_EVENT_BYTES)
    with ScriptedServer([Scripted(body=body)]) as server:
        done = run(RemoteBackend.open(server.url, mode="chat"))
    assert done.text == "par" and done.error == "an event from the server is larger than 1 MB; chatterm stopped reading"


def test_absurdly_nested_json_is_one_line():
    body = sse(chat_chunk("par"), done=False) + [b"data: " + b"[" * 100_000 + b"\n\n"]
    with ScriptedServer([Scripted(body=body)]) as server:
        done = run(RemoteBackend.open(server.url, mode="chat"))
    assert done.text == "par" and done.error.startswith("malformed event from the server: '[[[[")
    with ScriptedServer([], models=Scripted(body=[b"[" * 100_000], headers=JSON)) as server:
        message = raises_backend_error(lambda: RemoteBackend.open(server.url))
    assert message.endswith("did not answer with JSON; is this an OpenAI-compatible server?")


# -- our own count of tokens ------------------------------------------------------------------------


def test_a_server_that_ignores_max_tokens_is_stopped_at_it():
    body = sse(*[chat_chunk(" la")] * 10_000)
    with ScriptedServer([Scripted(body=body)]) as server:
        done = run(RemoteBackend.open(server.url, mode="chat"), SamplingSettings(max_new_tokens=5))
    assert done.text == " la" * 5 and done.stop_reason == "error"
    assert done.error == "the server sent more than the 5 tokens asked for (max_tokens); chatterm stopped the reply there"


def test_one_huge_chunk_is_cut_to_what_max_tokens_could_hold():
    whole = {"choices": [{"message": {"content": "x" * 1_000_000}, "finish_reason": "stop"}]}
    with ScriptedServer([Scripted(json_body=whole)]) as server:
        done = run(RemoteBackend.open(server.url, mode="chat"), SamplingSettings(max_new_tokens=4))
    assert done.text == "x" * (4 * server_limits.MAX_CHARS_PER_TOKEN) and "(max_tokens)" in done.error


def test_a_reply_within_max_tokens_is_untouched():
    body = sse(*[chat_chunk(" la")] * 5, chat_chunk(None, "length"))
    with ScriptedServer([Scripted(body=body)]) as server:
        done = run(RemoteBackend.open(server.url, mode="chat"), SamplingSettings(max_new_tokens=5))
    assert done.text == " la" * 5 and done.stop_reason == "length" and done.error is None


# -- deadlines: a byte at a time is not progress --------------------------------------------------


def test_a_reply_dripped_a_byte_at_a_time_meets_the_overall_deadline(monkeypatch):
    monkeypatch.setattr(server_limits, "SECONDS_PER_TOKEN", 0.1)  # 0.5 s of silence + 3 tokens: 0.8 s
    body = sse(chat_chunk("par"), done=False) + drip(b"".join(sse(chat_chunk("t"), chat_chunk(None, "stop"))), 0.05)
    with ScriptedServer([Scripted(body=body)]) as server:
        backend = RemoteBackend.open(server.url, mode="chat", timeout=0.5)  # a byte every 0.05 s: no read timeout
        started = time.monotonic()
        done = run(backend, SamplingSettings(max_new_tokens=3))
        took = time.monotonic() - started
    assert done.text == "par" and done.stop_reason == "error"
    assert done.error == ("the server took more than 0.8 s over a reply of at most 3 tokens; chatterm stopped "
                          "waiting (the text so far is kept)")
    assert 0.8 <= took < 2.0


def test_a_model_list_dripped_a_byte_at_a_time_is_given_up_on():
    dripped = Scripted(body=drip(json.dumps(MODELS).encode(), 0.05), headers=JSON)
    with ScriptedServer([], models=dripped) as server:
        started = time.monotonic()
        message = raises_backend_error(lambda: RemoteBackend.open(server.url, timeout=0.5))
        took = time.monotonic() - started
    assert message == f"{server.url}/models did not answer within 0.5 s; the server may be overloaded"
    assert took < 1.5


def test_headers_dripped_a_byte_at_a_time_are_given_up_on_and_the_reader_ends():
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nX-Padding: " + b"p" * 200 + b"\r\n\r\n"
    before = set(threading.enumerate())

    def readers():  # this test's own reader threads still running
        return [t for t in threading.enumerate() if t.name == "chatterm-remote-stream" and t not in before]

    with ScriptedServer([Scripted(body=drip(head, 0.05), raw=True)]) as server:
        backend = RemoteBackend.open(server.url, mode="chat", timeout=0.5)
        cancel = threading.Event()
        threading.Timer(0.3, cancel.set).start()
        started = time.monotonic()
        done = run(backend, cancel=cancel)
        assert done.stop_reason == "cancelled" and time.monotonic() - started < 0.6
        # closing shut the socket the headers were coming on: the reader thread ends now, not
        # when the server has dripped its last byte (about 12 s)
        deadline = time.monotonic() + 2
        while readers() and time.monotonic() < deadline:
            time.sleep(0.01)  # polling for the thread to end
        assert not readers()


# -- the API key, in every spelling -------------------------------------------------------------------

QUOTES_KEY = "sk-it's-\"mine\"-Zq9XwV"
SPACES_KEY = "sk-two  spaces   Zq9XwV"
MARKS = ("Zq9", "mine", "two sp")  # parts of the keys that no message of chatterm's contains


def shows_no_key(text: str) -> bool:
    return not any(mark in text for mark in MARKS)


@pytest.mark.parametrize("key, response", [
    # repr() escapes the apostrophe of a key in a text that holds both kinds of quote
    (QUOTES_KEY, Scripted(body=sse(chat_chunk("par"), f"{{not json, key={QUOTES_KEY}}}"))),
    # whitespace runs in the key: an error message is folded onto one line
    (SPACES_KEY, Scripted(401, json_body={"error": {"message": f"invalid key {SPACES_KEY}"}})),
    # a broken JSON error body shown as it is: the key JSON-escaped
    (QUOTES_KEY, Scripted(401, body=[b'{"error": "invalid key ' + json.dumps(QUOTES_KEY).encode()],
                          headers={"Content-Type": "text/plain"})),
    # URL-encoded, in a path a server echoes
    (QUOTES_KEY, Scripted(404, body=[f"no route /v1/x?key={quote(QUOTES_KEY, safe='')}".encode()],
                          headers={"Content-Type": "text/plain"})),
    # HTML-escaped, in a proxy's error page
    (QUOTES_KEY, Scripted(502, body=[b"<p>sk-it&#x27;s-&quot;mine&quot;-Zq9XwV</p>"], headers={"Content-Type": "text/html"})),
    # where the message is cut to one line: the cut used to leave the key's first characters
    (SPACES_KEY, Scripted(401, body=[b"x" * 225 + SPACES_KEY.encode()], headers={"Content-Type": "text/plain"})),
    # inside an error chunk of the stream
    (QUOTES_KEY, Scripted(body=sse(chat_chunk("par"), {"error": {"message": f"bad key {QUOTES_KEY!r}"}}))),
], ids=["repr", "spaces", "json", "url", "html", "cut", "mid-stream"])
def test_the_api_key_is_never_shown_in_any_spelling(key, response, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", key)
    with ScriptedServer([response]) as server:
        done = run(RemoteBackend.open(server.url, mode="chat"))
    assert server.headers[-1]["Authorization"] == f"Bearer {key}"
    assert done.stop_reason == "error" and "***" in done.error and shows_no_key(done.error), done.error


def test_a_key_echoed_in_the_reply_is_replaced_even_when_split_over_chunks(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", QUOTES_KEY)
    half = len(QUOTES_KEY) // 2
    body = sse(chat_chunk("your key: " + QUOTES_KEY[:half]), chat_chunk(QUOTES_KEY[half:] + ", and s"),
               chat_chunk(None, "stop"))
    with ScriptedServer([Scripted(body=body)]) as server:
        done = run(RemoteBackend.open(server.url, mode="chat"))
    assert done.text == "your key: ***, and s" and done.error is None  # a tail like the key's start is kept


def test_a_key_in_the_servers_model_ids_is_never_shown(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SPACES_KEY)
    with ScriptedServer([], models={"data": [{"id": f"echo {SPACES_KEY}"}, {"id": "b"}]}) as server:
        message = raises_backend_error(lambda: RemoteBackend.open(server.url))
        assert message.endswith("pick one with --remote-model NAME: echo ***, b") and shows_no_key(message)
        assert RemoteBackend.open(server.url, model="b").info.name == "b"
    with ScriptedServer([], models={"data": [{"id": SPACES_KEY}]}) as server:
        assert RemoteBackend.open(server.url).info.name == "***"  # the name shown, and saved with a chat


def test_a_key_no_http_header_can_carry_is_one_line(monkeypatch):
    for key in ("sk-line\nbreak-Zq9XwV", "sk-ünïcode-Zq9XwV"):
        monkeypatch.setenv("MY_KEY", key)
        message = raises_backend_error(lambda: RemoteBackend.open("http://127.0.0.1:9/v1", api_key_env="MY_KEY"))
        assert message == ("the API key in MY_KEY has a character an HTTP header cannot carry (a control "
                           "character or a non-ASCII letter); check the variable")
    r = subprocess.run([sys.executable, "-m", "chatterm", "generate", "http://127.0.0.1:9/v1", "--prompt", "x",
                        "--api-key-env", "MY_KEY"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "MY_KEY": "sk-line\nbreak-Zq9XwV"})
    assert r.returncode == 2 and r.stderr.startswith("chatterm: error: the API key in MY_KEY has a character")
    assert len(r.stderr.splitlines()) == 1 and shows_no_key(r.stderr)


def test_the_key_is_in_no_error_output_or_saved_chat_of_the_command_line(tmp_path):
    """Through chatterm itself: `generate` (stderr, exit 2) and a plain chat (its saved chat)."""
    def chatterm(*args, stdin=""):
        return subprocess.run([sys.executable, "-m", "chatterm", *args], input=stdin, capture_output=True,
                              text=True, timeout=120, env={**os.environ, "OPENAI_API_KEY": QUOTES_KEY})

    echo = Scripted(body=sse(chat_chunk(f"par {QUOTES_KEY}"), f"{{not json, key={QUOTES_KEY}}}"))
    with ScriptedServer([echo]) as server:
        r = chatterm("generate", server.url, "--prompt", "hi")
        assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
        assert r.stderr.startswith("chatterm: error: malformed event from the server:") and "***" in r.stderr
        assert shows_no_key(r.stdout + r.stderr) and r.stdout.startswith("par ***")
        r = chatterm(server.url, "--plain", "--save", stdin="hi\n")  # piped runs are saved when asked
    saved = list((tmp_path / "data" / "conversations").glob("*.json"))
    assert len(saved) == 1 and "malformed event" in saved[0].read_text() and "par ***" in saved[0].read_text()
    assert shows_no_key(saved[0].read_text()) and shows_no_key(r.stdout + r.stderr)
