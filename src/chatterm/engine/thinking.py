"""Split a thinking model's reasoning from its reply.

Qwen3, QwQ and the DeepSeek-R1 distills write `<think> ... </think>` before the answer. Some
chat templates already open the block in the generation prompt (the R1 distills end it with
`<think>\\n`), so a reply may start inside it: `prompt_opens_thinking` tells from the prompt's
tail. Only a `<think>` at the very start of a reply opens a block (one written later is the
model talking about the tag); the block ends at the first `</think>`, and the whitespace after it
is dropped. Text that could still be the start of either marker is held back until the next
piece decides it, as stop strings are (engine/stop.py), so a marker never reaches the screen. A
reply that ends inside the block (max tokens, Esc) keeps its reasoning; its answer is empty.

`split_thinking(events)` applies this to a stream: `TextDelta`s inside the block become
`ThinkingDelta`s (a server's own `ThinkingDelta`s, from `reasoning_content`, pass through), and
`Finished` gets the answer as `text`, the reasoning as `thinking`, and `thinking_tokens` (the
`TokenStep`s that fell inside the block, else one per reasoning piece, as servers send a token
per chunk). Nothing here touches torch.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable, Iterator

from .events import Event, Finished, TextDelta, ThinkingDelta, TokenStep

OPEN, CLOSE = "<think>", "</think>"


def prompt_opens_thinking(prompt_text: str) -> bool:
    """Whether a prompt ends inside an open thinking block (the template opened it)."""
    tail = prompt_text[-200:]
    return tail.rfind(OPEN) > tail.rfind(CLOSE)


class ThinkingSplitter:
    """Text pieces in, (reasoning, answer) pieces out; see the module doc."""

    def __init__(self, inside: bool = False) -> None:
        # "start": nothing but whitespace seen; "thinking": inside the block; "answer": after it,
        # or a reply that never opened one.
        self.state = "thinking" if inside else "start"
        self._pending = ""
        self._after_close = False  # drop the whitespace that follows </think>

    def feed(self, text: str) -> tuple[str, str]:
        """Add a piece; return (reasoning, answer) safe to show now."""
        buf = self._pending + text
        self._pending = ""
        thought = answer = ""
        while buf:
            if self.state == "start":
                stripped = buf.lstrip()
                if stripped.startswith(OPEN):
                    self.state, buf = "thinking", stripped[len(OPEN):]
                elif OPEN.startswith(stripped):  # empty, or a part of "<think>": wait and see
                    self._pending = buf
                    return thought, answer
                else:
                    self.state = "answer"
            elif self.state == "thinking":
                at = buf.find(CLOSE)
                if at >= 0:
                    thought += buf[:at]
                    self.state, self._after_close, buf = "answer", True, buf[at + len(CLOSE):]
                    continue
                hold = _partial_suffix(buf, CLOSE)
                thought += buf[: len(buf) - hold]
                self._pending = buf[len(buf) - hold:]
                return thought, answer
            else:
                if self._after_close:
                    buf = buf.lstrip()
                    self._after_close = not buf
                answer += buf
                buf = ""
        return thought, answer

    def flush(self) -> tuple[str, str]:
        """The held-back tail at the end of a reply: reasoning if inside the block, else answer."""
        text, self._pending = self._pending, ""
        return (text, "") if self.state == "thinking" else ("", text.strip() if self.state == "start" else text)


def _partial_suffix(buf: str, marker: str) -> int:
    """Length of the longest suffix of `buf` that is a proper prefix of `marker`."""
    for n in range(min(len(marker) - 1, len(buf)), 0, -1):
        if buf.endswith(marker[:n]):
            return n
    return 0


def split_thinking(events: Iterable[Event], *, inside: bool = False) -> Iterator[Event]:
    """The stream with reasoning apart from the reply (see the module doc)."""
    splitter = ThinkingSplitter(inside)
    thinking: list[str] = []
    answer: list[str] = []
    steps_inside = pieces = 0

    def split(text: str) -> Iterator[Event]:
        nonlocal pieces
        thought, said = text
        if thought:
            thinking.append(thought)
            pieces += 1
            yield ThinkingDelta(thought)
        if said:
            answer.append(said)
            yield TextDelta(said)

    for event in events:
        if isinstance(event, TextDelta):
            yield from split(splitter.feed(event.text))
        elif isinstance(event, ThinkingDelta):
            yield from split((event.text, ""))
        elif isinstance(event, TokenStep):
            if splitter.state != "answer":
                steps_inside += 1
            yield event
        elif isinstance(event, Finished):
            yield from split(splitter.flush())
            if not thinking:
                yield replace(event, text="".join(answer)) if splitter.state == "start" else event
                continue
            # The turn's ids in the context stood for the text with its reasoning; the model's template
            # writes a past turn without it, so they are dropped and the turn is encoded afresh.
            yield replace(event, text="".join(answer), thinking="".join(thinking).strip(),
                          thinking_tokens=steps_inside or pieces, context_ids=())
        else:
            yield event
