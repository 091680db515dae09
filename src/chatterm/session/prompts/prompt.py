"""Build the prompt token ids for a conversation, fitted to the context window.

The prompt is: system prompt + the turns from `conversation.context_start` on + the assistant
prefix. Every turn is tokenized once and its ids kept on the turn, so consecutive prompts share
an exact prefix and the KV cache is reused.

Fitting follows prompt_fit.py: room is kept for the reply, and a prompt that does not fit drops
whole oldest turns (the system prompt and the latest user message always stay) down to about half
the window; a latest user message that alone is too long keeps its tail.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from ...engine.text_stream import ids_within
from ..chats.conversation import Conversation, Turn
from .prompt_fit import first_in_context, fit_target, fit_turns, keep_tail, prompt_budget
from .template import ChatTemplate


@dataclass
class Prompt:
    ids: list[int]
    dropped_turns: int  # turns newly dropped from the context by this call


def template_key(template: ChatTemplate) -> str:
    blob = json.dumps(template.to_dict(), sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


class PromptBuilder:
    def __init__(self, tokenizer, template: ChatTemplate, context_window: int) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.window = context_window
        # Turns' cached ids are valid for this tokenizer and template, named by their content:
        # a new object after /model (even at a reused address) only matches if it tokenizes alike.
        self.key = f"{tokenizer.key}:{template_key(template)}"
        self._prefix = tokenizer.encode(template.assistant_prefix)

    def turn_ids(self, turn: Turn) -> list[int]:
        if turn.ids is None or turn.ids_key != self.key:
            turn.ids = self.tokenizer.encode(self.template.render_turn(turn.role, turn.text))
            turn.ids_key = self.key
        return turn.ids

    def system_ids(self, conversation: Conversation) -> list[int]:
        # A tokenizer that asks for BOS (Gemma's, Llama 2's: base models chatting through this
        # transcript) starts every prompt with it, as its text did in training.
        bos = self.tokenizer.bos_id
        start = [bos] if self.tokenizer.add_bos and bos is not None else []
        pieces = self.template.transcript(conversation.system, ())  # the system prompt's, if any
        return start + [i for piece in pieces for i in self.tokenizer.encode(piece)]

    def build(self, conversation: Conversation, max_new_tokens: int) -> Prompt:
        """Prompt ids asking for the next assistant turn; may advance `context_start`."""
        turns = conversation.turns
        first = first_in_context(turns, conversation.context_start)
        budget = prompt_budget(self.window, max_new_tokens)
        system = self.system_ids(conversation)
        start = self._fit(turns, first, len(system) + len(self._prefix), budget)
        conversation.context_start = start
        body = [i for t in turns[start:] for i in self.turn_ids(t)]
        return Prompt(ids=keep_tail(system, body, self._prefix, budget), dropped_turns=start - first)

    def refit(self, conversation: Conversation, ids_in_context: list[int], reply_ids: list[int]) -> list[int]:
        """The window filled up mid-reply: drop old turns to about half the window and return the
        new context, ending with the reply so far."""
        half = fit_target(self.window)
        turns = conversation.turns
        system = self.system_ids(conversation)
        tail = self._prefix + reply_ids
        start = self._fit(turns, conversation.context_start, len(system) + len(tail), half, open_on_user=False)
        conversation.context_start = start
        ids = system + [i for t in turns[start:] for i in self.turn_ids(t)] + tail
        return keep_tail([], ids, [], half)

    def _fit(self, turns: list[Turn], start: int, fixed: int, budget: int, **rule) -> int:
        """The first turn kept (prompt_fit.fit_turns) of a prompt of the turns' ids and `fixed` more."""
        # Only turns still in context are measured: a 1,000-turn chat costs no more per turn.
        lengths = {i: len(self.turn_ids(turns[i])) for i in range(start, len(turns))}
        return fit_turns(turns, start, lambda s: fixed + sum(lengths[i] for i in range(s, len(turns))),
                         budget=budget, window=self.window, turn_size=lengths.__getitem__, **rule)

    def reply_body_ids(self, turn: Turn) -> list[int]:
        """The ids of an assistant turn after the generation prompt, without the turn's ending:
        what a continuation of it extends. The ids it was generated as are reused."""
        opening = self.template.reply_opening(turn.text)
        prefix = self.template.assistant_prefix
        body = opening[len(prefix) :] if opening.startswith(prefix) else turn.text
        ids = self.turn_ids(turn)
        if ids[: len(self._prefix)] != self._prefix:
            return self.tokenizer.encode(body)
        return reuse_ids(self.tokenizer, body, ids[len(self._prefix) :])

    def finished_turn_ids(self, reply_text: str, reply_ids: list[int]) -> list[int]:
        """The ids a finished assistant turn occupies. The generated ids are reused as they are
        (so the cache still matches next turn); only text they do not cover, and the template's
        line ending, are tokenized afresh."""
        covered = self.tokenizer.decode_bytes(list(reply_ids)).decode("utf-8", errors="replace")
        if not reply_text.startswith(covered):  # cannot happen with a byte-level BPE; be safe
            return self.tokenizer.encode(self.template.render_turn("assistant", reply_text.strip()))
        rest = reply_text[len(covered) :]
        ending = self.template.reply_ending  # "\n" by default
        if not reply_text.endswith(ending):
            rest += ending
        return self._prefix + list(reply_ids) + (self.tokenizer.encode(rest) if rest else [])


def reuse_ids(tokenizer, text: str, ids: list[int]) -> list[int]:
    """`text` as ids that start with the longest prefix of `ids` whose bytes it begins with (so
    what the cache holds is repeated exactly); the rest is tokenized afresh."""
    kept = ids_within(tokenizer, ids, text)
    used = sum(len(tokenizer.token_bytes(token)) for token in kept)
    tail = text.encode("utf-8")[used:].decode("utf-8", errors="replace")
    return kept + (tokenizer.encode(tail) if tail else [])
