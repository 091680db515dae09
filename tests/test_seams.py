"""The seams between layers: the backend contract, the one factory, the one torch thread, the two
layers of generation, live stop strings and content-derived tokenizer keys."""

import gc
import inspect
import io
import sys
import threading
import weakref
from pathlib import Path

import pytest
import torch

import chatterm
from chatterm import cli
from chatterm.engine import torch_thread
from chatterm.engine.events import Finished, TextDelta, run_to_end
from chatterm.engine.generator import Generator
from chatterm.engine.settings import SamplingSettings
from chatterm.engine.stop import StopStringMatcher
from chatterm.engine.tokenizer import Tokenizer
from chatterm.engine.tokenizers import open_tokenizer
from chatterm.api import Model
from chatterm.repl import PlainChat
from chatterm.session import BackendInfo, ChatBackend, ChatSession, Conversation
from chatterm.session.backends.factory import open_backend
from chatterm.session.backends.local import LocalBackend
from chatterm.session.backends.remote.backend import RemoteBackend
from chatterm.session.prompts.prompt import PromptBuilder
from chatterm.session.prompts.template import DEFAULT_TEMPLATE
from helpers import MERGES, byte_tokenizer_spec, save_tiny_checkpoint, tiny_model
from ui_helpers import make_app, ready, settle
from remote_servers import Scripted, ScriptedServer, chat_chunk, sse

GREEDY = dict(temperature=0, repetition_penalty=1.0)


# -- the backend contract ------------------------------------------------------------------------


class ReplayBackend:
    """A second backend written only from ChatBackend's docstring: it replays fixed replies word
    by word (a word is a token), keeps no token ids, and never touches the conversation."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.info = BackendInfo(name="replay", device="none", dtype="-", context_window=1000)
        self.warnings = []
        self.supported_settings = {}  # it ignores every setting, but says so nowhere: all "honoured"
        self.context_is_estimate = False
        self.inspector_note = "a replay has no token probabilities"
        self.settings_apply_mid_reply = True  # it reads none, so none waits for the next reply
        self.tokenizer = None
        self.meta = {}
        self.seen = []
        self.closed = False

    def reply(self, conversation, settings, *, cancel=None, inspect=0):
        self.seen.append([(t.role, t.text) for t in conversation.turns])
        return self._replay(self.replies.pop(0), cancel)

    def continue_reply(self, conversation, settings, *, cancel=None, inspect=0):
        conversation.up_to_last_reply()
        return self._replay(self.replies.pop(0), cancel, more=True)

    def complete_stream(self, prompt, settings, *, cancel=None, inspect=0):
        return self._replay(self.replies.pop(0), cancel)

    def _replay(self, text, cancel, more=False):
        shown = []
        for i, word in enumerate(text.split(" ")):
            if cancel is not None and cancel.is_set():
                yield Finished("".join(shown), "cancelled", 10, 10, len(shown), 0.0, 0.0)
                return
            piece = word if i == 0 and not more else " " + word
            shown.append(piece)
            yield TextDelta(piece)
        yield Finished("".join(shown), "stop", 10, 10, len(shown), 0.0, 0.0)

    def logits(self, ids):
        raise ValueError("replay: a replay has no logits")

    def context_tokens(self, conversation, settings):
        return sum(self.count_tokens(t.text) for t in conversation.turns)

    def count_tokens(self, text):
        return len(text.split())

    def close(self):
        self.closed = True


def test_a_backend_written_from_the_protocol_gets_its_replies_kept():
    backend = ReplayBackend(["hello from replay", "second answer", "a retried answer", "one two three four"])
    session = ChatSession(backend, SamplingSettings())
    events = list(session.send("hi"))
    assert isinstance(events[-1], Finished)
    assert [(t.role, t.text) for t in session.conversation.turns] == [("user", "hi"), ("assistant", "hello from replay")]
    assert session.conversation.turns[-1].ids is None  # a backend without ids leaves none behind

    list(session.send("and?"))
    list(session.regenerate())  # the retry replaces the last reply, and the backend saw the history without it
    assert backend.seen[-1] == [("user", "hi"), ("assistant", "hello from replay"), ("user", "and?")]
    assert [t.text for t in session.conversation.turns] == ["hi", "hello from replay", "and?", "a retried answer"]
    assert session.undo() and [t.text for t in session.conversation.turns] == ["hi", "hello from replay"]
    assert session.context_tokens() == 4

    stream = session.send("go on")
    assert next(stream).text == "one"
    session.stop()
    done = list(stream)[-1]
    assert done.stop_reason == "cancelled"
    last = session.conversation.turns[-1]
    assert (last.text, last.stopped, last.note) == ("one", True, "stopped")

    backend.replies.append("and more")
    assert run_to_end(session.continue_reply()).text == " and more"
    assert session.conversation.turns[-1].text == "one and more"


def contract_members() -> tuple[set[str], set[str]]:
    """(attributes, methods) that ChatBackend declares, read from the Protocol itself."""
    attributes = set(ChatBackend.__annotations__)
    methods = {name for name, value in vars(ChatBackend).items() if inspect.isfunction(value) and not name.startswith("_")}
    return attributes, methods


def assert_implements_the_contract(backend):
    attributes, methods = contract_members()
    assert {"info", "tokenizer", "meta"} <= attributes and {"reply", "complete_stream", "logits", "close"} <= methods
    missing = sorted(name for name in attributes | methods if not hasattr(backend, name))
    assert not missing, f"{type(backend).__name__} lacks {missing}"
    for name in methods:  # the same parameters, by name and kind (keyword-only stays keyword-only)
        declared = list(inspect.signature(getattr(ChatBackend, name)).parameters.values())[1:]
        implemented = list(inspect.signature(getattr(backend, name)).parameters.values())
        assert [(p.name, p.kind) for p in implemented] == [(p.name, p.kind) for p in declared], name


def test_the_local_and_remote_backends_and_the_double_implement_every_member(parrot_checkpoint):
    assert_implements_the_contract(ReplayBackend([]))
    local = LocalBackend.load(parrot_checkpoint)
    assert_implements_the_contract(local)
    assert local.tokenizer is not None and local.meta["name"] == "parrot"
    with ScriptedServer([Scripted(body=sse(chat_chunk("ok"), chat_chunk(None, "stop")))]) as server:
        remote = RemoteBackend.open(server.url, mode="chat")
        try:
            assert_implements_the_contract(remote)
            assert remote.tokenizer is None and remote.meta == {}
            with pytest.raises(ValueError, match=r"^http://127\.0\.0\.1:\d+: a server gives no logits"):
                Model(remote).logits([1, 2])  # the Python API asks without probing
        finally:
            remote.close()


def test_the_local_backend_only_yields_events(parrot_checkpoint):
    backend = LocalBackend.load(parrot_checkpoint)
    conv = Conversation()
    conv.add("user", "hi")
    events = list(backend.reply(conv, SamplingSettings(**GREEDY)))
    assert [t.role for t in conv.turns] == ["user"]  # nothing appended: that is the session's job
    done = events[-1]
    assert isinstance(done, Finished) and done.text.strip() == "hello there, friend"
    assert done.context_ids and done.ids_key == backend.prompts.key


# -- the one factory -----------------------------------------------------------------------------


def test_open_backend_dispatches_paths_and_urls(parrot_checkpoint, monkeypatch):
    backend = open_backend(parrot_checkpoint, device=None, dtype="fp32", model="scripted", mode="chat")  # server options dropped
    assert isinstance(backend, LocalBackend) and backend.info.dtype == "fp32"

    # A real server (local, scripted): the options a front end passes for any spec open it, the
    # local ones (device, dtype) ignored, the unset ones (None) dropped.
    with ScriptedServer([Scripted(body=sse(chat_chunk("ok"), chat_chunk(None, "stop")))]) as server:
        remote = open_backend(server.url, device="cpu", dtype="fp32", model="scripted", mode="chat", api_key_env=None)
        assert isinstance(remote, RemoteBackend) and remote.info.dtype == "remote"
        conv = Conversation()
        conv.add("user", "hi")
        assert run_to_end(remote.reply(conv, SamplingSettings())).text == "ok"
        assert server.requests[0]["model"] == "scripted"
        remote.close()

    monkeypatch.setitem(sys.modules, "chatterm.session.backends.remote.backend", None)  # a build without it
    with pytest.raises(ValueError, match=r"^https://example\.com: remote backends are not available"):
        open_backend("https://example.com")


# -- closing what is let go, and settings read when the request is sent ------------------------

OK = Scripted(body=sse(chat_chunk("ok"), chat_chunk(None, "stop")))


def open_chat(url):
    return open_backend(url, mode="chat")


def test_a_model_switch_closes_the_replaced_servers_client():
    with ScriptedServer([OK]) as first, ScriptedServer([OK]) as second:
        session = ChatSession(open_chat(first.url), SamplingSettings())
        old = session.backend
        assert run_to_end(session.send("hi")).text == "ok" and not old.client.http.is_closed
        PlainChat(session, out=io.StringIO(), err=io.StringIO(), load_backend=open_chat).run([f"/model {second.url}\n"])
        new = session.backend
        assert new is not old and new.info.source == second.url.removesuffix("/v1")
        assert old.client.http.is_closed
        with pytest.raises(RuntimeError, match="client has been closed"):
            old.client.http.get(f"{first.url}/models")  # its connections are gone, not just marked
        assert run_to_end(session.send("and now?")).text == "ok" and len(second.requests) == 1
        session.close()  # the front end is done
        assert session.backend is None and new.client.http.is_closed


def test_a_server_replaced_mid_reply_is_closed_when_that_reply_ends():
    stalled = Scripted(body=sse(chat_chunk("still"), done=False), stall=True)  # then silence
    with ScriptedServer([stalled]) as first, ScriptedServer([OK]) as second:
        session = ChatSession(open_chat(first.url), SamplingSettings())
        old = session.backend
        stream = session.send("hi")
        assert next(stream) == TextDelta("still")
        session.use_backend(open_chat(second.url))  # the TUI's /model loads while a reply streams
        assert not old.client.http.is_closed  # the reply goes on with the server it started on
        session.stop()
        done = list(stream)[-1]
        assert (done.stop_reason, done.text) == ("cancelled", "still") and old.client.http.is_closed
        session.close()


async def test_the_tui_closes_its_backend_when_it_ends():
    with ScriptedServer([OK]) as server:
        app = make_app(server.url)
        async with app.run_test(size=(100, 30)) as pilot:
            await ready(app, pilot)
            backend = app.session.backend
            assert not backend.client.http.is_closed
        assert backend.client.http.is_closed and app.session.backend is None


def test_closing_the_local_backend_lets_go_of_the_model_and_its_cache(parrot_checkpoint):
    backend = LocalBackend.load(parrot_checkpoint)
    model, cache = weakref.ref(backend.generator.model), weakref.ref(backend.generator.cache)
    backend.close()
    gc.collect()
    assert model() is None and cache() is None


def test_a_server_reads_the_live_settings_when_the_request_is_sent():
    """Not a copy taken when the reply was asked for (see the contract's module doc)."""
    with ScriptedServer([OK]) as server:
        backend = open_chat(server.url)
        conv = Conversation()
        conv.add("user", "hi")
        settings = SamplingSettings(temperature=0.9)
        events = backend.reply(conv, settings)
        settings.set("temperature", "0.3")  # /set between asking and sending
        assert run_to_end(events).text == "ok"
        assert server.requests[0]["temperature"] == 0.3 and not backend.settings_apply_mid_reply
        backend.close()


# -- all torch work on the one torch thread -----------------------------------------------------


@pytest.fixture
def forward_threads():
    """The names of the threads that built a model (registered a parameter) or ran any module's
    forward while the test body ran."""
    names = set()
    hooks = torch.nn.modules.module
    handles = [
        hooks.register_module_forward_hook(lambda module, args, output: names.add(threading.current_thread().name)),
        hooks.register_module_parameter_registration_hook(
            lambda module, name, param: names.add(threading.current_thread().name)),
    ]
    yield names
    for handle in handles:
        handle.remove()


def assert_torch_thread_only(names):
    assert names, "no forward pass ran"
    assert all(name.startswith(torch_thread.THREAD_NAME) for name in names), names


def test_python_api_runs_torch_on_the_torch_thread(parrot_checkpoint, forward_threads):
    model = chatterm.load(parrot_checkpoint)
    assert_torch_thread_only(forward_threads)  # the model is built there
    forward_threads.clear()
    assert "".join(model.stream_text("User: hi\nAssistant:", **GREEDY, max_new_tokens=6)).startswith(" hello")
    assert_torch_thread_only(forward_threads)
    forward_threads.clear()
    assert model.complete("User: hi\nAssistant:", **GREEDY, max_new_tokens=6).text.startswith(" hello")
    assert_torch_thread_only(forward_threads)
    forward_threads.clear()
    assert model.logits(model.tokenizer.encode("hi")).shape == (2, 288)
    assert_torch_thread_only(forward_threads)


@pytest.mark.parametrize("chat", [False, True])
def test_generate_runs_torch_on_the_torch_thread(parrot_checkpoint, forward_threads, capsys, chat):
    prompt = "hi" if chat else "User: hi\nAssistant:"
    args = ["generate", str(parrot_checkpoint), "--prompt", prompt, "--temperature", "0", "--max-new-tokens", "12"]
    assert cli.main(args + (["--chat"] if chat else [])) == 0
    assert "hello there" in capsys.readouterr().out
    assert_torch_thread_only(forward_threads)


def test_chat_session_and_plain_repl_run_torch_on_the_torch_thread(parrot_checkpoint, forward_threads, monkeypatch, capsys):
    session = ChatSession(open_backend(parrot_checkpoint), SamplingSettings(**GREEDY))
    assert run_to_end(session.send("hi")).text.strip() == "hello there, friend"
    assert_torch_thread_only(forward_threads)
    forward_threads.clear()
    monkeypatch.setattr(sys, "stdin", io.StringIO("how are you?\n/retry\n"))
    assert cli.main(["chat", str(parrot_checkpoint), "--plain", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.count("very well, thank you") == 2
    assert_torch_thread_only(forward_threads)


async def test_the_tui_runs_torch_on_the_torch_thread(parrot_checkpoint, forward_threads):
    app = make_app(parrot_checkpoint)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(app, pilot)
        assert_torch_thread_only(forward_threads)  # loading, in the app's worker, ran its torch work there
        forward_threads.clear()
        app.send("hi")
        await settle(app, pilot)
        assert app.session.conversation.turns[-1].text.strip() == "hello there, friend"
    assert_torch_thread_only(forward_threads)


# -- generation in two layers --------------------------------------------------------------------


def test_token_loop_yields_ids_and_probabilities_and_frees_the_cache_when_closed():
    model = tiny_model(seed=0)
    gen = Generator(model, open_tokenizer(byte_tokenizer_spec(eot=False)))
    loop = gen.tokens([1, 2, 3], SamplingSettings(**GREEDY, max_new_tokens=6), inspect=3)
    choices = list(loop)
    assert [c.token_id for c in choices] == loop.token_ids and len(choices) == 6
    assert all(0 < c.prob <= 1 and c.candidates[0][0] == c.token_id for c in choices)
    assert loop.reason == "length" and loop.prefill_tokens == 3
    # The cache holds the prompt and the new tokens but the last: a reply cut at max_new_tokens
    # does not pay a forward pass for a token nothing will read.
    assert gen.cached_ids == (1, 2, 3, *loop.token_ids[:-1])

    early = iter(gen.tokens([1, 2, 3], SamplingSettings(**GREEDY, max_new_tokens=50)))
    next(early)
    early.close()  # a consumer that stops (a stop string) releases the generator at once
    assert run_to_end(gen.stream([1, 2, 3], SamplingSettings(**GREEDY, max_new_tokens=6))).new_tokens == 6


def test_reset_forgets_the_cached_prefix():
    gen = Generator(tiny_model(seed=0), open_tokenizer(byte_tokenizer_spec()))
    ids = list(range(10, 40))
    assert gen.prefill(ids)[1] == 30 and gen.prefill(ids + [5])[1] == 1
    gen.reset()
    assert gen.cached_ids == () and gen.prefill(ids)[1] == 30


def test_run_to_end_returns_finished_and_refuses_a_stream_without_one():
    done = Finished("x", "stop", 1, 1, 1, 0.0, 0.0)
    assert run_to_end([TextDelta("x"), done]) is done
    with pytest.raises(RuntimeError, match="without a Finished"):
        run_to_end([TextDelta("x")])


# -- stop strings changed mid-reply --------------------------------------------------------------


def test_matcher_takes_a_new_set_without_losing_held_text():
    m = StopStringMatcher(["User:"])
    assert m.feed("fine. Us") == ("fine. ", False) and m.held == "Us"
    m.set_stops(["###"])  # "Us" can no longer start a stop string: released with the next piece
    assert m.feed("e it") == ("Use it", False)
    m.feed("x ##")
    assert m.held == "##"
    m.set_stops(["##"])  # the held text now is a whole stop string: the next piece decides it
    assert m.feed("") == ("", True) and m.stopped_at == "##"

    m = StopStringMatcher(["User:"])
    assert m.feed("ok Us") == ("ok ", False)
    m.set_stops(["User:", "Use"])
    assert m.feed("ed") == ("", True) and m.stopped_at == "Use"  # held "Us" + "ed" makes the new stop


def test_stop_strings_edited_while_a_reply_streams_apply_at_the_next_token(parrot):
    model, tok = parrot
    gen = Generator(model, tok)
    settings = SamplingSettings(**GREEDY, max_new_tokens=40)
    shown = []
    for event in gen.stream(tok.encode("User: how are you?\nAssistant:"), settings, stop=["User:"]):
        if isinstance(event, TextDelta):
            shown.append(event.text)
            if len(shown) == 1:
                settings.set("stop", "thank")  # as /set or the panel would, mid-reply
    assert event.stop_reason == "stop" and event.text == " very well, " == "".join(shown)


# -- which tokenizer produced cached ids ---------------------------------------------------------


def test_tokenizer_key_comes_from_content():
    spec = byte_tokenizer_spec()
    assert open_tokenizer(spec).key == open_tokenizer(dict(spec)).key
    assert open_tokenizer({**spec, "name": "relabelled"}).key == open_tokenizer(spec).key
    other = Tokenizer.bpe_spec([bytes([i]) for i in range(256)] + MERGES[:-1], {"<|endoftext|>": 266})
    assert open_tokenizer(other).key != open_tokenizer(spec).key
    assert Tokenizer.gpt2().key == Tokenizer.gpt2().key != open_tokenizer(spec).key
    builders = [PromptBuilder(open_tokenizer(spec), DEFAULT_TEMPLATE, 100) for _ in range(2)]
    assert builders[0].key == builders[1].key  # two objects, one vocabulary: cached ids carry over


def test_hugging_face_and_gguf_tokenizer_keys_come_from_content(tmp_path):
    """The same for Llama-family models: copies of one folder or one GGUF file share their keys
    (cached ids carry over), another vocabulary or chat template does not."""
    import json
    import shutil

    from tiny_llama import CHATML, hf_model, save_hf_folder, write_gguf

    model = hf_model("llama", seed=1)
    first = save_hf_folder(tmp_path / "a", model)
    copy = Path(shutil.copytree(first, tmp_path / "copy"))
    other_template = save_hf_folder(tmp_path / "t", model, template=CHATML.replace("<|im_end|>", "<|im_end|>!"))
    other_vocab = Path(shutil.copytree(first, tmp_path / "v"))
    spec = json.loads((other_vocab / "tokenizer.json").read_text())
    spec["added_tokens"].append({**spec["added_tokens"][-1], "id": 399, "content": "<|extra|>"})
    (other_vocab / "tokenizer.json").write_text(json.dumps(spec))
    keys = {name: LocalBackend.load(path) for name, path in
            [("first", first), ("copy", copy), ("template", other_template), ("vocab", other_vocab)]}
    tok = {name: b.tokenizer.key for name, b in keys.items()}
    prompts = {name: b.prompts.key for name, b in keys.items()}
    assert tok["first"] == tok["copy"] == tok["template"] != tok["vocab"]
    assert prompts["first"] == prompts["copy"] and prompts["template"] != prompts["first"] != prompts["vocab"]
    gguf = write_gguf(tmp_path / "m.gguf", model)
    gguf_copy = Path(shutil.copy(gguf, tmp_path / "copy.gguf"))
    assert LocalBackend.load(gguf).tokenizer.key == LocalBackend.load(gguf_copy).tokenizer.key


def test_switching_model_and_back_never_reuses_stale_ids(parrot_checkpoint, tmp_path):
    """/model to a checkpoint with another vocabulary, then back: every turn's ids are the ones
    the current tokenizer gives, and the parrot still answers."""
    other_spec = Tokenizer.bpe_spec([bytes([i]) for i in range(256)] + MERGES[::-1], {"<|endoftext|>": 267})
    other = save_tiny_checkpoint(tmp_path / "other", tiny_model(seed=4), other_spec, name="other")
    session = ChatSession(open_backend(parrot_checkpoint), SamplingSettings(**GREEDY, max_new_tokens=40))
    list(session.send("hi"))
    session.backend = open_backend(other)
    assert session.context_tokens() > 0  # as the UI does after /model: every turn tokenized anew
    assert all(t.ids_key == session.backend.prompts.key for t in session.conversation.turns)
    session.backend = open_backend(parrot_checkpoint)
    done = run_to_end(session.send("how are you?"))
    assert done.text.strip() == "very well, thank you"
    fresh = Conversation(turns=[type(t)(t.role, t.text) for t in session.conversation.turns[:-1]])
    backend = session.backend
    assert backend.prompts.build(fresh, 40).ids == backend.prompts.build(
        Conversation(turns=session.conversation.turns[:-1]), 40).ids
    assert all(t.ids_key == backend.prompts.key for t in session.conversation.turns)
