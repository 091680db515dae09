"""Stop strings, the streaming detokenizer and the generator's event stream, on real tiny models."""

import threading

import torch
from hypothesis import given, settings as hsettings, strategies as st

from chatterm.engine.detokenizer import StreamingDetokenizer
from chatterm.engine.events import Finished, TextDelta, TokenStep
from chatterm.engine.generator import Generator
from chatterm.engine.settings import SamplingSettings
from chatterm.engine.stop import StopStringMatcher
from chatterm.engine.tokenizers import open_tokenizer
from helpers import byte_tokenizer_spec, tiny_model

GREEDY = dict(temperature=0, repetition_penalty=1.0)


def run_matcher(pieces, stops):
    m = StopStringMatcher(stops)
    shown, stopped = [], False
    for piece in pieces:
        out, stopped = m.feed(piece)
        shown.append(out)
        if stopped:
            break
    if not stopped:
        shown.append(m.flush())
    return shown, stopped


def test_stop_string_split_across_three_pieces_never_shows():
    shown, stopped = run_matcher(["fine\n", "Us", "er", ":", " more"], ["User:"])
    assert stopped and "".join(shown) == "fine\n"
    assert all("U" not in s for s in shown)  # not even the first letter of the marker, ever


def test_held_back_prefix_that_does_not_complete_is_released():
    shown, stopped = run_matcher(["I am a ", "Us", "eful tool"], ["User:"])
    assert not stopped and "".join(shown) == "I am a Useful tool"
    assert shown[1] == ""  # "Us" waited for the next piece
    shown, stopped = run_matcher(["end with Us"], ["User:"])
    assert not stopped and "".join(shown) == "end with Us"  # released at the end of the stream


def test_earliest_of_several_stop_strings_wins():
    shown, stopped = run_matcher(["a ### b User: c"], ["User:", "###"])
    assert stopped and "".join(shown) == "a "


@hsettings(max_examples=200, deadline=None)
@given(text=st.text(alphabet="Usr: ab\n", max_size=40), cuts=st.lists(st.integers(0, 40), max_size=8))
def test_stream_joined_equals_text_cut_at_first_stop(text, cuts):
    points = sorted({c for c in cuts if c <= len(text)})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)])]
    shown, stopped = run_matcher(pieces, ["User:"])
    at = text.find("User:")
    assert "".join(shown) == (text if at == -1 else text[:at])
    assert stopped == (at != -1)
    assert all("User:" not in "".join(shown[: i + 1]) for i in range(len(shown)))


def test_multibyte_characters_split_across_tokens_stream_cleanly():
    tok = open_tokenizer(byte_tokenizer_spec())
    text = "café 😀 naïve 日本"
    ids = tok.encode(text)
    assert len(ids) > len(text)  # some characters span several tokens
    detok = StreamingDetokenizer(tok.token_bytes)
    pieces = [detok.add(i) for i in ids] + [detok.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


@hsettings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=60))
def test_detokenizer_stream_equals_one_shot_decode(data):
    tok = open_tokenizer(byte_tokenizer_spec())
    ids = list(data)  # in this tokenizer ids 0..255 are single bytes
    detok = StreamingDetokenizer(tok.token_bytes)
    streamed = "".join(detok.add(i) for i in ids) + detok.flush()
    assert streamed == data.decode("utf-8", errors="replace")


def test_parrot_reply_stops_before_marker_with_stats(parrot):
    model, tok = parrot
    gen = Generator(model, tok)
    prompt = tok.encode("User: hi\nAssistant:")
    events = list(gen.stream(prompt, SamplingSettings(**GREEDY), stop=["User:"], inspect=5))
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    done = events[-1]
    assert isinstance(done, Finished) and done.stop_reason == "stop"
    assert text == done.text == " hello there, friend\n"
    assert "User" not in text
    steps = [e for e in events if isinstance(e, TokenStep)]
    assert len(steps) == done.new_tokens and all(abs(sum(p for _, _, p in s.candidates) - 1) < 0.2 for s in steps[:3])
    assert all(s.token_id == s.candidates[0][0] for s in steps)  # greedy picks the top candidate
    assert done.prompt_tokens == len(prompt) and done.ttft_s > 0 and done.new_tokens >= 5


def test_settings_are_read_at_every_step(parrot):
    """Lowering max_new_tokens while a reply streams ends it at once."""
    model, tok = parrot
    gen = Generator(model, tok)
    settings = SamplingSettings(**GREEDY, max_new_tokens=100)
    deltas = 0
    for event in gen.stream(tok.encode("User: how are you?\nAssistant:"), settings, stop=["User:"]):
        if isinstance(event, TextDelta):
            deltas += 1
            if deltas == 3:
                settings.set("max_new_tokens", "4")
    assert event.stop_reason == "length" and event.new_tokens == 4


def test_cancel_takes_effect_within_one_step():
    model = tiny_model(seed=0)
    gen = Generator(model, open_tokenizer(byte_tokenizer_spec()))
    cancel = threading.Event()
    n = 0
    for event in gen.stream([1, 2, 3], SamplingSettings(max_new_tokens=200, seed=1), cancel=cancel, inspect=1):
        if isinstance(event, TokenStep):
            n += 1
            if n == 5:
                cancel.set()
    assert event.stop_reason == "cancelled" and event.new_tokens == 5


def test_prefix_reuse_prefills_only_new_tokens():
    model = tiny_model(seed=0)
    gen = Generator(model, open_tokenizer(byte_tokenizer_spec()))
    first = list(range(10, 60))
    _, n1 = gen.prefill(first)
    assert n1 == 50
    _, n2 = gen.prefill(first + [7, 8, 9])
    assert n2 == 3
    logits, n3 = gen.prefill(first[:20])  # roll back (undo / retry)
    assert n3 == 1
    expected = model(torch.tensor([first[:20]]))[0, -1]
    assert torch.allclose(logits, expected, atol=1e-5)


def test_seed_makes_sampling_reproducible_and_eos_stops():
    model = tiny_model(seed=0)
    tok = open_tokenizer(byte_tokenizer_spec())
    s = SamplingSettings(temperature=1.0, top_k=0, top_p=1.0, min_p=0, seed=123, max_new_tokens=30)
    a = Generator(model, tok).complete([5, 6, 7], s)
    b = Generator(model, tok).complete([5, 6, 7], s)
    assert a.token_ids == b.token_ids and a.text == b.text


def test_nan_weights_end_the_reply_with_an_error_not_a_crash():
    model = tiny_model(seed=0)
    with torch.no_grad():
        model.transformer.ln_f.weight.fill_(float("nan"))
    done = Generator(model, open_tokenizer(byte_tokenizer_spec())).complete([1, 2], SamplingSettings())
    assert done.stop_reason == "error" and "NaN" in done.error
