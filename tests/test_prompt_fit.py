"""The one prompt fitter (session/prompts/prompt_fit.py): its rule on counted sizes, then as the built-in
transcript, a Jinja template and the context meter apply it with real tokenizers and the tiny model."""

import re
import sys
from pathlib import Path

import pytest

import chatterm

from chatterm.engine.hf_tokenizer import HFTokenizer
from chatterm.engine.settings import SamplingSettings
from chatterm.engine.tokenizers import open_tokenizer
from chatterm.session import ChatSession, Conversation
from chatterm.session.context_fit import fit_context
from chatterm.session.prompts.jinja_template import JinjaChatTemplate, JinjaPromptBuilder
from chatterm.session.backends.local import LocalBackend
from chatterm.session.prompts.prompt import PromptBuilder
from chatterm.session.prompts.prompt_fit import drop_oldest, fit_turns, keep_tail, prompt_budget, reply_reserve
from chatterm.session.prompts.template import DEFAULT_TEMPLATE, ChatTemplate, chat_messages
from helpers import byte_tokenizer_spec
from tiny_llama import CHATML, byte_bpe


class Turn:
    def __init__(self, role: str, size: int) -> None:
        self.role, self.size = role, size


def turns_of(*sizes: int) -> list[Turn]:
    """Alternating user/assistant turns of the given sizes, the last one a user turn."""
    roles = ["user", "assistant"] * len(sizes)
    return [Turn(role, size) for role, size in zip(roles[len(sizes) % 2 == 0 :], sizes)]


def measuring(turns: list[Turn], fixed: int, calls: list[int] | None = None):
    """size(s) of a prompt of `fixed` tokens (system prompt, generation prompt) plus the turns from s."""
    def size(s: int) -> int:
        if calls is not None:
            calls.append(s)
        return fixed + sum(t.size for t in turns[s:])
    return size


# -- the rule, on counted sizes ----------------------------------------------------------------

@pytest.mark.parametrize("window, max_new, reserve", [(200, 50, 50), (200, 500, 100), (200, 0, 1), (7, 100, 3), (1, 5, 1)])
def test_the_reply_keeps_its_room_but_never_more_than_half_the_window(window, max_new, reserve):
    assert reply_reserve(window, max_new) == reserve
    assert prompt_budget(window, max_new) == window - reserve


def test_a_prompt_within_budget_keeps_every_turn_even_above_half_the_window():
    turns = turns_of(30, 30, 30, 30, 10)  # 130 + 10 fixed: over half of 200, within 150
    assert fit_turns(turns, 0, measuring(turns, 10), budget=150, window=200) == 0


def test_whole_oldest_turns_go_down_to_half_the_window_and_the_context_opens_on_a_user_turn():
    turns = turns_of(30, 30, 30, 30, 30, 30, 10)  # 190 + 10 fixed, budget 150, half 100
    start = fit_turns(turns, 0, measuring(turns, 10), budget=150, window=200, turn_size=lambda i: turns[i].size)
    # 4 turns leave 10 + 30 + 30 + 10 = 80; 3 would leave 110, over half; turn 4 is a user turn.
    assert start == 4 and turns[start].role == "user"
    odd = [Turn("user", 30), Turn("assistant", 60), Turn("assistant", 30), Turn("user", 30), Turn("assistant", 30), Turn("user", 10)]
    # Two turns bring it to 90, but the context would open on a reply: the next one goes too.
    assert fit_turns(odd, 0, measuring(odd, 10), budget=150, window=200) == 3


def test_the_latest_turn_stays_even_when_it_alone_is_over_budget():
    turns = turns_of(20, 20, 500)
    assert fit_turns(turns, 0, measuring(turns, 10), budget=150, window=200) == 2
    chat_that_ends_on_a_reply = turns_of(20, 20, 500)[:2]  # the meter may drop every turn there
    assert fit_turns(chat_that_ends_on_a_reply, 0, measuring(chat_that_ends_on_a_reply, 190), budget=150,
                     window=200, keep=2) == 2


def test_estimates_that_overstate_a_turn_are_made_up_by_another_round_and_exact_ones_take_one():
    turns = [Turn("user", 30) for _ in range(8)] + [Turn("user", 10)]  # 250 + 10 fixed; budget 200 = half
    exact, estimated = [], []
    assert fit_turns(turns, 0, measuring(turns, 10, exact), budget=200, window=400,
                     turn_size=lambda i: turns[i].size) == 2
    assert exact == [0, 2]  # measured before and after the one round
    # Each turn taken for far more than it is: every round drops one, then measures again.
    assert fit_turns(turns, 0, measuring(turns, 10, estimated), budget=200, window=400,
                     turn_size=lambda i: 1000) == 2
    assert estimated == [0, 1, 2]


def test_measured_turn_by_turn_it_drops_what_exact_sizes_drop():
    for sizes in [(30, 30, 30, 30, 30, 30, 10), (5, 90, 5, 90, 20), (100, 100, 100)]:
        turns = turns_of(*sizes)
        exact = fit_turns(turns, 0, measuring(turns, 10), budget=150, window=200, turn_size=lambda i: turns[i].size)
        assert fit_turns(turns, 0, measuring(turns, 10), budget=150, window=200) == exact


def test_a_refit_stops_as_soon_as_it_fits_even_on_a_reply():
    turns = turns_of(30, 30, 30, 30, 10)
    size = measuring(turns, 40)  # the reply so far counted in
    assert fit_turns(turns, 0, size, budget=100, window=200, open_on_user=False) == 3
    assert fit_turns(turns, 0, size, budget=100, window=200) == 4


def test_dropping_by_turns_never_takes_the_latest():
    turns = turns_of(1, 1, 1, 1, 1)
    assert drop_oldest(turns, 0, 2, lambda i: 1, keep=4) == 2
    assert drop_oldest(turns, 0, 100, lambda i: 1, keep=4) == 4
    assert drop_oldest(turns, 4, 100, lambda i: 1, keep=4) == 4


def test_what_is_still_too_long_keeps_its_end_with_head_and_tail_whole():
    head, body, tail = [1, 1], list(range(100, 200)), [9]
    assert keep_tail(head, body, tail, 200) == head + body + tail
    assert keep_tail(head, body, tail, 10) == [1, 1, 193, 194, 195, 196, 197, 198, 199, 9]
    assert keep_tail(head, body, tail, 2) == [199, 9]  # no room for the head: the prompt's last ids


# -- with real tokenizers -----------------------------------------------------------------------

def long_chat(system: str = "Be brief.", exchanges: int = 12, last: str = "last question") -> Conversation:
    conv = Conversation(system=system)
    for i in range(exchanges):
        conv.add("user", f"question {i} " + "x" * (3 * i))
        conv.add("assistant", f"answer {i} " + "y" * (5 + i))
    conv.add("user", last)
    return conv


def builtin_builder(window: int) -> PromptBuilder:
    return PromptBuilder(open_tokenizer(byte_tokenizer_spec()), DEFAULT_TEMPLATE, window)


def jinja_builder(window: int) -> JinjaPromptBuilder:
    tokenizer = HFTokenizer(byte_bpe(), {"type": "huggingface"}, bos="<|endoftext|>", eos="<|im_end|>")
    template = JinjaChatTemplate(CHATML, bos_token="<|endoftext|>", eos_token="<|im_end|>")
    return JinjaPromptBuilder(tokenizer, template, window)


def prompt_text(builder, system: str, turns) -> str:
    """What a prompt of these turns reads, rendered apart from the builder."""
    if isinstance(builder, JinjaPromptBuilder):
        return builder.template.render(chat_messages(system, turns), True)
    return builder.template.prompt_text(system, turns)


@pytest.mark.parametrize("make", [builtin_builder, jinja_builder], ids=["builtin", "jinja"])
@pytest.mark.parametrize("window, max_new", [(120, 10), (200, 50), (300, 40), (300, 1000), (400, 64)])
def test_whole_turns_are_dropped_the_system_prompt_stays_and_the_reply_keeps_its_room(make, window, max_new):
    b = make(window)
    conv = long_chat()
    prompt = b.build(conv, max_new)
    start = conv.context_start
    assert prompt.dropped_turns == start > 0 and conv.turns[start].role == "user"
    assert len(prompt.ids) <= prompt_budget(window, max_new)
    # The prompt is the system prompt and exactly the whole turns from `start` on...
    assert b.tokenizer.decode(prompt.ids) == prompt_text(b, conv.system, conv.turns[start:])
    assert b.tokenizer.decode(prompt.ids).startswith(("Be brief.\nUser: ", "<|im_start|>system\nBe brief."))
    # ...and one exchange more would have been over half the window.
    one_more = b.tokenizer.encode_marked(prompt_text(b, conv.system, conv.turns[start - 2 :]))
    assert len(one_more) > window // 2


def test_a_single_message_too_big_for_the_window_keeps_its_end():
    b = builtin_builder(120)
    conv = long_chat(exchanges=3, last="start " + "z" * 500 + " the end")
    prompt = b.build(conv, 20)
    text = b.tokenizer.decode(prompt.ids)
    assert conv.context_start == len(conv.turns) - 1 and len(prompt.ids) == prompt_budget(120, 20)
    assert text.startswith("Be brief.\n") and text.endswith("z the end\nAssistant:") and "start" not in text
    jinja = jinja_builder(120)
    prompt = jinja.build(long_chat(exchanges=3, last="start " + "z" * 500 + " the end"), 20)
    assert len(prompt.ids) == prompt_budget(120, 20)
    assert jinja.tokenizer.decode(prompt.ids).endswith("z the end<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("make", [builtin_builder, jinja_builder], ids=["builtin", "jinja"])
def test_a_refit_mid_reply_keeps_the_reply_and_about_half_the_window(make):
    b = make(200)
    conv = long_chat(exchanges=4)
    ids = b.build(conv, 16).ids
    reply = b.tokenizer.encode(" a reply that goes on and on" * 2)
    before = conv.context_start
    new = b.refit(conv, ids + reply, reply)
    assert len(new) <= 100 and new[-len(reply) :] == reply
    # Whole turns went: the system prompt still opens the context.
    assert conv.context_start > before and b.tokenizer.decode(new).startswith(("Be brief.\nUser:", "<|im_start|>system\nBe brief."))


def test_the_context_meter_fits_as_the_next_prompt_will(parrot_checkpoint):
    backend = LocalBackend.load(parrot_checkpoint)  # a window of 256 tokens
    conv = long_chat(exchanges=30)
    session = ChatSession(backend, SamplingSettings(max_new_tokens=40), conv, autosave=False)
    dropped = fit_context(session)
    assert dropped == conv.context_start > 0 and conv.turns[conv.context_start].role == "user"
    assert session.context_tokens() <= backend.info.context_window // 2
    assert backend.prompts.build(conv, 40).dropped_turns == 0  # the prompt agrees: nothing more to drop
    assert fit_context(session) == 0


def test_the_rule_and_the_transcript_are_written_once():
    """Half the window, the template's ending and the messages a prompt holds: each in one module
    (once there were six copies of the truncation, three of the reserve, three of the transcript)."""
    def home(thing) -> Path:
        return Path(sys.modules[thing.__module__].__file__).resolve()

    once = {r"window\s*//\s*2": home(reply_reserve), r'split\("\{text\}"': home(ChatTemplate),
            r'"role":\s*"system"': home(ChatTemplate)}
    sources = {path.resolve(): path.read_text(encoding="utf-8") for path in Path(chatterm.__file__).parent.rglob("*.py")}
    for pattern, module in once.items():
        assert [path for path, text in sources.items() if re.search(pattern, text)] == [module], pattern
