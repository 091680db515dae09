"""The text layer of generation: a token loop's ids in, engine events out.

`text_events` turns each new token into the events a front end shows: a `TokenStep` for the
inspector, `TextDelta`s of text that is safe to show (never a split character, thanks to the
streaming detokenizer; never a part of a stop string, thanks to the holdback of
`StopStringMatcher`), and at the end one `Finished` record. The stop strings are the caller's
fixed ones (the chat template's) plus `settings.stop`, which is read at every token: an edit made
while a reply streams applies from the next token on. Nothing here touches torch.
"""

from __future__ import annotations

import time
from typing import Iterator

from .detokenizer import StreamingDetokenizer
from .events import Event, Finished, TextDelta, TokenStep
from .settings import SamplingSettings
from .stop import StopStringMatcher


def text_events(loop, tokenizer, settings: SamplingSettings, *, stop=(), inspect: bool = False) -> Iterator[Event]:
    """Events for one completion. `loop` is a generator.TokenLoop (iterable of SampleResults
    with `reason`, `error`, `prefill_tokens`, `token_ids` and times); `stop` strings always
    apply, `settings.stop` as it is at each token. The last event is always `Finished`."""
    fixed = tuple(stop)
    user_stops = list(settings.stop)
    matcher = StopStringMatcher([*fixed, *user_stops])
    detok = StreamingDetokenizer(tokenizer.token_bytes)
    text: list[str] = []
    stopped = False
    choices = iter(loop)
    try:
        for choice in choices:
            if settings.stop != user_stops:  # edited mid-reply: the new set applies from here
                user_stops = list(settings.stop)
                matcher.set_stops([*fixed, *user_stops])
            token = choice.token_id
            if inspect:
                yield TokenStep(
                    index=len(loop.token_ids) - 1,
                    token_id=token,
                    text=tokenizer.token_text(token),
                    prob=choice.prob,
                    candidates=tuple((i, tokenizer.token_text(i), p) for i, p in choice.candidates),
                )
            safe, stopped = matcher.feed(detok.add(token))
            if safe:
                text.append(safe)
                yield TextDelta(safe)
            if stopped:
                loop.reason = "stop"
                break
    finally:
        choices.close()  # a stop (or a consumer that went away) ends the loop now: frees the cache
    if not stopped:
        tail, stopped = matcher.feed(detok.flush())
        if not stopped:
            tail += matcher.flush()
        if tail:
            text.append(tail)
            yield TextDelta(tail)
    reply = "".join(text)
    started = loop.started_at
    yield Finished(
        text=reply,
        stop_reason=loop.reason,
        prompt_tokens=len(loop.prompt_ids),
        prefill_tokens=loop.prefill_tokens,
        new_tokens=len(loop.token_ids),
        ttft_s=(loop.first_token_at - started) if loop.first_token_at else 0.0,
        elapsed_s=time.perf_counter() - started if started else 0.0,
        token_ids=tuple(ids_within(tokenizer, loop.token_ids, reply)),
        error=loop.error,
    )


def ids_within(tokenizer, generated: list[int], reply: str) -> list[int]:
    """The longest prefix of `generated` whose bytes lie wholly inside `reply`."""
    target = reply.encode("utf-8")
    out, used = [], 0
    for token in generated:
        raw = tokenizer.token_bytes(token)
        if target[used : used + len(raw)] != raw:
            break
        out.append(token)
        used += len(raw)
    return out
