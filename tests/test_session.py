"""Conversations: prompt fitting, cache reuse across turns, persistence, config, commands."""

import json

import pytest

from chatterm.engine.events import ContextTrimmed, Finished, TextDelta
from chatterm.engine.settings import SamplingSettings
from chatterm.engine.tokenizers import open_tokenizer
from chatterm.session import (
    ChatSession,
    CommandError,
    Conversation,
    ConversationStore,
    load_config,
    parse_command,
    read_conversation,
)
from chatterm.session.backends.local import LocalBackend
from chatterm.session.prompts.prompt import PromptBuilder
from chatterm.session.prompts.template import DEFAULT_TEMPLATE
from helpers import byte_tokenizer_spec

GREEDY = dict(temperature=0, repetition_penalty=1.0)


def builder(window=200):
    return PromptBuilder(open_tokenizer(byte_tokenizer_spec()), DEFAULT_TEMPLATE, window)


def chat_of(n_exchanges, system="Be brief.", words=8):
    conv = Conversation(system=system)
    for i in range(n_exchanges):
        conv.add("user", f"question {i} " + "x" * words)
        conv.add("assistant", f"answer {i} " + "y" * words)
    conv.add("user", "last question")
    return conv


def test_prompt_drops_whole_oldest_turns_and_keeps_system_and_latest():
    b = builder(window=200)
    conv = chat_of(10)
    prompt = b.build(conv, max_new_tokens=50)
    text = b.tokenizer.decode(prompt.ids)
    assert len(prompt.ids) <= 150 and prompt.dropped_turns > 0
    assert text.startswith("Be brief.\nUser: question")  # system kept; opens on a whole user turn
    assert text.endswith("User: last question\nAssistant:")
    assert "question 0" not in text
    # Dropped down to about half the window, so the next turns append to the same prefix.
    assert len(prompt.ids) <= 100


def test_prompt_prefix_is_stable_across_turns_after_trimming():
    b = builder(window=200)
    conv = chat_of(10)
    first = b.build(conv, 50).ids
    conv.add("assistant", "ok")
    conv.add("user", "and then?")
    second = b.build(conv, 50)
    assert second.dropped_turns == 0
    assert second.ids[: len(first) - 10] == first[: len(first) - 10]


def test_overlong_latest_message_keeps_its_tail():
    b = builder(window=120)
    conv = Conversation(system="S")
    conv.add("user", "start " + "z" * 500 + " the end")
    ids = b.build(conv, 20).ids
    assert len(ids) <= 100
    assert b.tokenizer.decode(ids).endswith("the end\nAssistant:")


def test_second_turn_prefills_only_its_new_tokens(parrot_checkpoint):
    backend = LocalBackend.load(parrot_checkpoint)
    session = ChatSession(backend, SamplingSettings(**GREEDY))
    first = list(session.send("hi"))[-1]
    second = list(session.send("how are you?"))[-1]
    assert first.text.strip() == "hello there, friend"
    assert second.text.strip() == "very well, thank you"
    new_turn = len(backend.tokenizer.encode("User: how are you?\nAssistant:"))
    assert second.prefill_tokens <= new_turn + 1  # only the new turn (and at most the line end)
    assert second.prompt_tokens > 2 * new_turn


def test_undo_and_regenerate_reuse_the_cache(parrot_checkpoint):
    backend = LocalBackend.load(parrot_checkpoint)
    session = ChatSession(backend, SamplingSettings(**GREEDY))
    list(session.send("hi"))
    list(session.send("how are you?"))
    again = list(session.regenerate())[-1]
    assert again.text.strip() == "very well, thank you" and again.prefill_tokens == 1
    assert session.undo()
    assert [t.role for t in session.conversation.turns] == ["user", "assistant"]
    assert session.start_edit(0) == "hi" and session.editing == 0


def test_reply_that_fills_the_window_trims_and_continues(parrot_checkpoint):
    backend = LocalBackend.load(parrot_checkpoint)  # window of 256 tokens
    conv = Conversation()
    for i in range(12):
        conv.add("user", "hi")
        conv.add("assistant", "hello there, friend")
    session = ChatSession(backend, SamplingSettings(temperature=1.0, top_k=0, top_p=1, min_p=0, seed=3, max_new_tokens=300), conv)
    events = list(session.send("tell me everything"))
    trims = [e for e in events if isinstance(e, ContextTrimmed)]
    done = events[-1]
    assert isinstance(done, Finished) and done.error is None
    assert trims, "the long history or the long reply must have been trimmed"
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == done.text
    assert session.conversation.turns[-1].role == "assistant"


def test_autosave_writes_every_turn(tmp_path, parrot_checkpoint):
    store = ConversationStore(tmp_path / "convs")
    session = ChatSession(LocalBackend.load(parrot_checkpoint), SamplingSettings(**GREEDY), store=store)
    list(session.send("hi"))
    loaded = read_conversation(store.path_for(session.conversation))
    assert [t.text for t in loaded.turns] == ["hi", "hello there, friend"]


def test_broken_config_is_reported_and_defaults_used(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("theme = 'x'\n[sampling]\ntemperature = -3\ntop_k = 5\nbogus = 1\n")
    config, problems = load_config(path)
    assert "temperature" not in config.sampling and config.sampling["top_k"] == 5  # the bad one: default
    assert any("temperature" in p for p in problems) and any("bogus" in p for p in problems)
    path.write_text("this is [not toml")
    config, problems = load_config(path)
    assert len(problems) == 1 and "using defaults" in problems[0] and config.theme == "chatterm-dark"


def test_slash_command_parsing():
    assert parse_command("/set temperature 0.5").arg == "temperature 0.5"
    assert parse_command("/exit").name == "quit"
    with pytest.raises(CommandError, match="did you mean /retry"):
        parse_command("/rety")
    with pytest.raises(CommandError, match=r"/load needs N\|ID\|PATH"):
        parse_command("/load")


def test_conversation_json_round_trip():
    conv = chat_of(2)
    again = Conversation.from_dict(json.loads(json.dumps(conv.to_dict())))
    assert [(t.role, t.text) for t in again.turns] == [(t.role, t.text) for t in conv.turns]
    assert again.system == conv.system and again.id == conv.id
