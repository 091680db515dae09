"""How a conversation is fitted to a context window: the one rule that the built-in transcript
(prompt.py), a model's own Jinja template (jinja_template.py), the remote backend (through
prompt.py, and when a server says a prompt is too long: session/backends/remote/reply.py), the
context meter ahead of the next prompt (session/context_fit.py) and the warning about attached
files (session/commands.py) follow.

- Room is kept for the reply: what it may use (max_new_tokens), but never more than half the
  window (`reply_reserve`); the prompt gets the rest (`prompt_budget`).
- A prompt over its budget drops whole oldest turns (the system prompt is not a turn: it always
  stays), and not just until it fits but down to about half the window: the next several turns
  then append to the same prefix instead of shifting the window every turn (positions are learned,
  so a shifted context must be prefilled again from scratch). The latest turn always stays, and
  the context opens on a user turn (`fit_turns`).
- When the window fills up in the middle of a reply, whole oldest turns are dropped the same way
  to about half the window, the reply so far counted in; this refit stops as soon as the prompt
  fits, even on a reply (`fit_turns` with `open_on_user=False`).
- What is still too long once only the latest turn is left keeps its end (`keep_tail`).

Sizes are whatever the caller counts (token ids, a server's counts, estimates; characters, where a
Jinja builder cuts a long saved chat before rendering it). A caller that can only measure the
whole prompt gets each turn's size as the difference that dropping it makes.
"""

from __future__ import annotations

from typing import Callable, Sequence


def reply_reserve(window: int, max_new_tokens: int) -> int:
    """Tokens kept free for the reply: at least one, at most half the window."""
    return max(1, min(max_new_tokens, window // 2))


def prompt_budget(window: int, max_new_tokens: int) -> int:
    """The most tokens a prompt may take and still leave the reply its room."""
    return window - reply_reserve(window, max_new_tokens)


def fit_target(window: int) -> int:
    """What a prompt that must drop turns is cut down to: half the window (never more than a
    budget, since the reserve is at most half), and what a refit mid-reply leaves, the reply so
    far included."""
    return window // 2


def first_in_context(turns: Sequence, context_start: int) -> int:
    """Where a prompt that asks for a reply opens before it is fitted: at `context_start`, but
    never past the latest turn, which must be a user message (ValueError otherwise)."""
    if not turns or turns[-1].role != "user":
        raise ValueError("the conversation must end with a user message")
    return min(context_start, len(turns) - 1)


def fit_turns(turns: Sequence, start: int, size: Callable[[int], int], *, budget: int, window: int,
              turn_size: Callable[[int], int] | None = None, keep: int | None = None,
              open_on_user: bool = True) -> int:
    """The first turn the prompt keeps. `size(s)` is the prompt's size when it opens on turn `s`;
    while it is over `budget`, whole turns from `start` on are dropped down to `fit_target`.

    `turn_size(i)`, what dropping turn `i` saves, may be an estimate where measuring is costly (a
    template render): the prompt is measured again after each round of drops, and another round
    follows while it is still over budget. Without it, each turn is measured exactly. Turns from
    `keep` on (default: the last turn) are never dropped."""
    sizes: dict[int, int] = {}

    def measure(s: int) -> int:
        if s not in sizes:
            sizes[s] = size(s)
        return sizes[s]

    def exact_size(i: int) -> int:  # summed over the turns dropped, exactly what the prompt lost
        return measure(i) - measure(i + 1)

    keep = len(turns) - 1 if keep is None else keep
    while start < keep and measure(start) > budget:
        start = drop_oldest(turns, start, measure(start) - fit_target(window), turn_size or exact_size, keep=keep,
                            open_on_user=open_on_user)
    return start


def drop_oldest(turns: Sequence, start: int, over: int, turn_size: Callable[[int], int], *, keep: int,
                open_on_user: bool = True) -> int:
    """The first turn kept once whole turns from `start` on are dropped until `over` (how much the
    prompt is over) is used up, and then, with `open_on_user`, any reply the context would open
    on. Turns from `keep` on are never dropped."""
    while start < keep and (over > 0 or (open_on_user and turns[start].role != "user")):
        over -= turn_size(start)
        start += 1
    return start


def keep_tail(head: list[int], body: list[int], tail: list[int], budget: int) -> list[int]:
    """`head + body + tail` within `budget`: what is cut is the start of `body` (the latest
    message's, when only that is left), while `head` (the system prompt) and `tail` (the
    generation prompt) fit whole; past that, the prompt keeps its last `budget` ids."""
    prompt = head + body + tail
    if len(prompt) <= budget:
        return prompt
    keep = max(budget - len(head) - len(tail), 1)
    return (head + body[-keep:] + tail)[-budget:]
