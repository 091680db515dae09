"""Thinking models: reasoning apart from the reply, locally and from a server.

The local model is a real tiny Llama folder whose template and tokens carry `<think>` (a bigram
model, remote_servers.make_bigram_model: its reply after `<|assistant|>` is fixed by a table), so
what it reasons and answers is known. The server is a scripted one on 127.0.0.1 that sends
`reasoning_content` beside the content, as llama.cpp and vLLM do.
"""

from __future__ import annotations

import io
import json

import pytest
from remote_servers import Scripted, ScriptedServer, chat_chunk, make_bigram_model, sse

from chatterm.engine.events import Finished, TextDelta, ThinkingDelta
from chatterm.engine.settings import SamplingSettings
from chatterm.engine.thinking import ThinkingSplitter, prompt_opens_thinking
from chatterm.repl import DIM, PlainChat
from chatterm.session import ChatSession, Conversation, open_backend
from chatterm.session.backends.remote.backend import RemoteBackend

THINK_WORDS = ["<|user|>", "<|system|>", "<|assistant|>", "<think>", "</think>", " pondering", " deeply",
               " hello", " there", " friend", "User:"]
# Qwen3's switch: `enable_thinking` false closes an empty block in the generation prompt.
THINK_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>"
    "{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}{% endif %}")
THINK_NEXT = {"<|assistant|>": "<think>", "<think>": " pondering", " pondering": " deeply", " deeply": "</think>",
              "</think>": " hello", " hello": " there", " there": " friend", " friend": "<|endoftext|>"}


@pytest.fixture(scope="module")
def thinker(tmp_path_factory):
    folder = make_bigram_model(tmp_path_factory.mktemp("thinker") / "thinker", chat_template=THINK_TEMPLATE,
                               words=THINK_WORDS, table=THINK_NEXT)
    return open_backend(str(folder))


def greedy(**values) -> SamplingSettings:
    return SamplingSettings(temperature=0, **values)


# -- the splitter ------------------------------------------------------------------------------

def split_all(pieces, inside=False):
    splitter = ThinkingSplitter(inside)
    thought = answer = ""
    for piece in pieces:
        t, a = splitter.feed(piece)
        thought, answer = thought + t, answer + a
    t, a = splitter.flush()
    return thought + t, answer + a


def test_markers_split_over_pieces_never_reach_either_side():
    assert split_all(["<th", "ink>", "hm", "m</th", "ink>", "  ", "ans", "wer"]) == ("hmm", "answer")
    assert split_all(["  <think>\nstep</think>\n\nyes"]) == ("\nstep", "yes")


def test_a_think_tag_later_in_a_reply_is_text():
    assert split_all([" hello ", "<think>x"]) == ("", " hello <think>x")


def test_a_reply_that_starts_inside_the_block_and_one_cut_inside_it():
    assert split_all(["abc</think> yes"], inside=True) == ("abc", "yes")
    assert split_all(["<think>still thin", "king</thi"]) == ("still thinking</thi", "")


def test_the_prompt_tail_tells_whether_the_template_opened_the_block():
    assert prompt_opens_thinking("<|im_start|>assistant\n<think>\n")  # DeepSeek-R1 distills
    assert not prompt_opens_thinking("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # Qwen3, thinking off
    assert not prompt_opens_thinking("User: hi\nAssistant:")


# -- a local model -----------------------------------------------------------------------------

def test_local_reasoning_streams_apart_is_kept_and_never_sent_back(thinker, tmp_path):
    chat = ChatSession(thinker, greedy())
    events = list(chat.send("hi", inspect=3))
    assert "".join(e.text for e in events if isinstance(e, ThinkingDelta)) == " pondering deeply"
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "hello there friend"  # after </think>
    done = events[-1]
    assert isinstance(done, Finished) and done.text == "hello there friend" and done.thinking == "pondering deeply"
    assert done.thinking_tokens == 4  # <think> pondering deeply </think>
    turn = chat.conversation.turns[-1]
    assert (turn.text, turn.thinking, turn.thinking_tokens) == ("hello there friend", "pondering deeply", 4)
    # The next prompt has the reply as the template writes it: no reasoning in it.
    chat.conversation.add("user", "again")
    prompt = thinker.tokenizer.decode(thinker.prompts.build(chat.conversation, 16).ids)
    assert prompt == "<|user|>hi\n<|assistant|>hello there friend\n<|user|>again\n<|assistant|>"
    # Saved, loaded and exported with it.
    loaded = Conversation.from_dict(json.loads(json.dumps(chat.conversation.to_dict())))
    assert (loaded.turns[1].thinking, loaded.turns[1].thinking_tokens) == ("pondering deeply", 4)
    markdown = loaded.to_markdown()
    assert "**Assistant's thinking:**\n\n> pondering deeply\n\n**Assistant:** hello there friend" in markdown


def test_thinking_off_reaches_the_template_and_the_reply_has_none(thinker):
    chat = ChatSession(thinker, greedy(thinking=False))
    done = list(chat.send("hi"))[-1]
    assert (done.text, done.thinking) == (" hello there friend", "")
    assert thinker.prompts.template.render([{"role": "user", "content": "x"}], True).endswith("<think></think>")
    chat.settings.thinking = True
    assert list(chat.send("and now?"))[-1].thinking == "pondering deeply"


def test_a_reply_cut_inside_the_thinking_keeps_what_came(thinker):
    chat = ChatSession(thinker, greedy(max_new_tokens=2))
    done = list(chat.send("hi"))[-1]
    assert (done.stop_reason, done.text, done.thinking) == ("length", "", "pondering")
    turn = chat.conversation.turns[-1]
    assert (turn.text, turn.thinking, turn.note) == ("", "pondering", "cut at max_new_tokens")


def test_stop_strings_act_inside_the_thinking(thinker):
    chat = ChatSession(thinker, greedy(stop=[" deep"]))
    done = list(chat.send("hi"))[-1]
    assert (done.stop_reason, done.thinking, done.text) == ("stop", "pondering", "")


def test_the_plain_repl_prints_reasoning_dimmed_on_a_terminal_and_hides_it_when_asked(thinker):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    PlainChat(ChatSession(thinker, greedy()), out=out, err=io.StringIO()).run(["hi\n"], prompt=False)
    assert out.getvalue().startswith(f"{DIM}pondering deeply\x1b[22m\n\nhello there friend\n")
    out = Terminal()
    PlainChat(ChatSession(thinker, greedy()), out=out, err=io.StringIO(), hide_thinking=True).run(["hi\n"], prompt=False)
    assert out.getvalue() == "hello there friend\n"
    piped = io.StringIO()  # a pipe gets the reply as it is saved
    PlainChat(ChatSession(thinker, greedy()), out=piped, err=io.StringIO()).run(["hi\n"], prompt=False)
    assert piped.getvalue() == "hello there friend\n"


# -- a server sending reasoning_content --------------------------------------------------------

def reasoning_chunk(text):
    return {"choices": [{"index": 0, "delta": {"reasoning_content": text}, "finish_reason": None}]}


def test_a_servers_reasoning_content_is_shown_apart_and_not_sent_back():
    body = sse(reasoning_chunk("Paris is"), reasoning_chunk(" the capital."), chat_chunk("\n\nParis."),
               chat_chunk(None, "stop"))
    with ScriptedServer([Scripted(body=body)]) as server:
        backend = RemoteBackend.open(server.url, mode="chat")
        chat = ChatSession(backend, SamplingSettings(thinking=False))
        events = list(chat.send("Name the capital of France."))
        assert [e.text for e in events if isinstance(e, ThinkingDelta)] == ["Paris is", " the capital."]
        done = events[-1]
        assert (done.text.strip(), done.thinking, done.thinking_tokens) == ("Paris.", "Paris is the capital.", 2)
        assert server.requests[0]["chat_template_kwargs"] == {"enable_thinking": False}
        list(chat.send("And of Italy?"))
        assert server.requests[1]["messages"][1] == {"role": "assistant", "content": "Paris."}
        assert backend.supported_settings["thinking"] is None


def test_a_server_that_leaves_think_tags_in_the_content_is_split_too():
    body = sse(chat_chunk("<thi"), chat_chunk("nk>hmm</think>"), chat_chunk("\nyes"), chat_chunk(None, "stop"))
    with ScriptedServer([Scripted(body=body)]) as server:
        backend = RemoteBackend.open(server.url, mode="chat")
        done = list(ChatSession(backend, SamplingSettings()).send("hi"))[-1]
        assert (done.text, done.thinking) == ("yes", "hmm")
        assert "chat_template_kwargs" not in server.requests[0]  # "auto": the model's default


# -- the TUI -----------------------------------------------------------------------------------

async def test_the_tui_shows_reasoning_in_a_block_that_folds_when_the_answer_starts(thinker):
    from ui_helpers import make_app, ready, settle, type_keys

    from chatterm.ui.chat_view import AssistantMessage
    from chatterm.ui.thinking_block import ThinkingBlock

    app = make_app(thinker.info.source)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(app, pilot)
        await type_keys(pilot, "hi")
        await pilot.press("enter")
        await settle(app, pilot)
        block, reply = app.chat.query(ThinkingBlock).last(), app.chat.query(AssistantMessage).last()
        assert list(app.chat.children).index(block) + 1 == list(app.chat.children).index(reply)
        assert (block.open, block.border_title, reply.text.strip()) == (False, "", "hello there friend")
        assert str(block.render()) == "▸ thought for 4 tokens · F4 shows it"
        await pilot.press("f4")
        assert block.open and block.border_title == "▾ thought for 4 tokens" and str(block.render()) == "pondering deeply"
        await type_keys(pilot, "/think")
        await pilot.press("enter")
        assert not block.open
        await type_keys(pilot, "/think off")
        await pilot.press("enter")
        assert app.session.settings.thinking is False
        assert app.settings_panel.query_one("#set-thinking").value == "off"
        app.commands.run("/clear")
        await pilot.pause()
        assert not app.chat.query(ThinkingBlock)
        app.commands.run("/load 1")  # the saved chat, redrawn with its reasoning folded
        await pilot.pause()
        blocks = app.chat.query(ThinkingBlock)
        assert len(blocks) == 1 and str(blocks.first().render()) == "▸ thought for 4 tokens · F4 shows it"


@pytest.mark.slow
def test_a_real_server_whose_model_thinks_in_its_text(tmp_path):
    """`transformers serve` on 127.0.0.1 serving the thinking model: the server sends `<think>`
    in the content (it does not parse reasoning); the reply is split all the same, and the
    template switch goes to the server as chat_template_kwargs."""
    pytest.importorskip("fastapi", reason="transformers[serving] is not installed")
    from remote_servers import TransformersServer

    folder = make_bigram_model(tmp_path / "thinker", chat_template=THINK_TEMPLATE, words=THINK_WORDS, table=THINK_NEXT)
    server = TransformersServer(folder, tmp_path / "serve.log").start()
    try:
        backend = RemoteBackend.open(server.url)
        chat = ChatSession(backend, greedy(max_new_tokens=12))
        events = list(chat.send("hi"))
        done = events[-1]
        assert (done.thinking, done.text.strip()) == ("pondering deeply", "hello there friend")
        assert any(isinstance(e, ThinkingDelta) for e in events)
        assert chat.conversation.turns[-1].text == "hello there friend"
    finally:
        server.stop()
