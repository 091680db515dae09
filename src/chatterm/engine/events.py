"""What a generation stream yields. Plain data: no torch, safe to hand to any front end.

A stream is any iterator of these events whose last one is `Finished`. `run_to_end` is the one
blocking wrapper: every `complete()` is a stream run through it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable


@dataclass(frozen=True)
class TextDelta:
    """New reply text, safe to show: never part of a stop string or of a split character."""

    text: str


@dataclass(frozen=True)
class ThinkingDelta:
    """New reasoning text of a thinking model (`<think>...</think>` in the text, or a server's
    `reasoning_content`): shown apart from the reply, never sent back to the model as reply."""

    text: str


@dataclass(frozen=True)
class TokenStep:
    """One sampled token with the distribution it was drawn from (after the sampling filters)."""

    index: int  # 0 for the first new token
    token_id: int
    text: str  # the token on its own, for display
    prob: float
    candidates: tuple[tuple[int, str, float], ...]  # (id, text, prob), most likely first


@dataclass(frozen=True)
class ContextTrimmed:
    """Old turns were dropped (before or during the reply) to fit the context window."""

    dropped_turns: int
    prompt_tokens: int


@dataclass(frozen=True)
class Finished:
    """The end of a reply, with its statistics. Always the last event of a stream."""

    text: str  # the whole reply as streamed (stop string excluded)
    stop_reason: str  # "stop", "eos", "length", "cancelled", "error"
    prompt_tokens: int  # tokens in the context when the reply started
    prefill_tokens: int  # of those, how many had to be computed (the rest came from the cache)
    new_tokens: int
    ttft_s: float  # time to first token
    elapsed_s: float
    token_ids: tuple[int, ...] = field(default=())  # generated ids wholly inside `text`
    error: str | None = None
    # Set by a backend that keeps token ids (the local one; a remote one leaves them empty): the
    # ids that stand for this reply in the model's context as a finished turn (the generated ids
    # inside the chat template's framing), and the tokenizer+template key they belong to. The
    # session stores them on the turn, so the next prompt repeats them and the cache is reused.
    context_ids: tuple[int, ...] = field(default=())
    ids_key: str = ""
    # A thinking model's reasoning, apart from `text` (engine/thinking.py), and how many tokens it took.
    thinking: str = ""
    thinking_tokens: int = 0

    @property
    def tokens_per_s(self) -> float:
        """Decode speed: tokens after the first over the time after the first."""
        decode_time = self.elapsed_s - self.ttft_s
        return (self.new_tokens - 1) / decode_time if self.new_tokens > 1 and decode_time > 0 else 0.0


Event = TextDelta | ThinkingDelta | TokenStep | ContextTrimmed | Finished
STOP_REASONS = ("stop", "eos", "length", "cancelled", "error")


def run_to_end(events: Iterable[Event]) -> Finished:
    """Consume a stream to its end and return its `Finished` record."""
    done = None
    for event in events:
        if isinstance(event, Finished):
            done = event
    if done is None:
        raise RuntimeError("the stream ended without a Finished event")
    return done
