"""A model's own Jinja chat template, and the prompt builder that goes with it.

`JinjaChatTemplate.render(messages, add_generation_prompt)` renders the template the way
transformers' `apply_chat_template` does: a sandboxed, immutable Jinja environment with
`trim_blocks` and `lstrip_blocks`, the `loopcontrols` extension, and `bos_token`, `eos_token`,
`raise_exception`, `strftime_now` and a `tojson` filter that keeps non-ASCII characters.

`JinjaPromptBuilder` has `PromptBuilder`'s interface (session/prompt.py), but cannot render turns
one at a time: a template may open with a default system prompt, or render the first turn
differently. So it renders the whole conversation, and splits it into one segment per message by
rendering every prefix of it (`render(messages[:k])` must be a prefix of `render(messages[:k+1])`,
which holds for the templates of real models; where it does not, the whole prompt is encoded in
one go and only the cache's common-prefix reuse applies).

Each segment is encoded with the template's markers as special tokens and the message content as
plain text (`encode_marked`), found by rendering once more with placeholder contents: a message
that contains `<|im_end|>` neither ends its turn nor opens another. An assistant segment reuses the
ids the model generated (kept on the turn), so the next prompt repeats the previous prompt and
reply exactly and only the new turn is prefilled.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from .conversation import Conversation, Turn
from .prompt import Prompt, reuse_ids

_PLACEHOLDER = "\ue000{}\ue001"  # private-use characters: no template or message contains them


class TemplateError(ValueError):
    """The chat template failed to render (a syntax error, or it raised for this conversation)."""


@lru_cache(maxsize=8)
def _compile(source: str):
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(f"the chat template refused this conversation: {message}")

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except TemplateSyntaxError as e:
        raise TemplateError(f"the chat template is not valid Jinja (line {e.lineno}: {e.message})") from e


@dataclass(frozen=True)
class JinjaChatTemplate:
    source: str  # the Jinja text
    bos_token: str = ""
    eos_token: str = ""
    stop: tuple[str, ...] = ()  # stop strings; end-of-turn tokens stop replies anyway
    enable_thinking: bool | None = None  # Qwen3's switch, passed to the template when set

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        from jinja2 import TemplateError as JinjaError

        try:
            return _compile(self.source).render(
                messages=messages, add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token, eos_token=self.eos_token,
                **({} if self.enable_thinking is None else {"enable_thinking": self.enable_thinking}),
            )
        except TemplateError:
            raise
        except (JinjaError, TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
            raise TemplateError(f"the chat template failed ({type(e).__name__}: {e})") from e

    def check(self) -> "JinjaChatTemplate":
        """Raise TemplateError now if the template does not even compile."""
        _compile(self.source)
        return self


class JinjaPromptBuilder:
    def __init__(self, tokenizer, template: JinjaChatTemplate, context_window: int) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.window = context_window
        source = f"{template.source}\0{template.bos_token}\0{template.eos_token}".encode("utf-8")
        self.key = f"{tokenizer.key}:{hashlib.sha256(source).hexdigest()[:16]}"  # content, as PromptBuilder's
        self._segment_ids: weakref.WeakKeyDictionary[Turn, list[int]] = weakref.WeakKeyDictionary()

    # -- PromptBuilder's interface -------------------------------------------------------------

    def reserve_for_reply(self, max_new_tokens: int) -> int:
        return max(1, min(max_new_tokens, self.window // 2))

    def turn_ids(self, turn: Turn) -> list[int]:
        """The ids of the turn's segment in the last prompt built (an estimate before that)."""
        if turn in self._segment_ids:
            return self._segment_ids[turn]
        return self.tokenizer.encode(turn.text)

    def system_ids(self, conversation: Conversation) -> list[int]:
        if not conversation.system:
            return []
        return self._segments(conversation, len(conversation.turns))[0][0]

    def build(self, conversation: Conversation, max_new_tokens: int) -> Prompt:
        """Prompt ids asking for the next assistant turn; may advance `context_start`."""
        turns = conversation.turns
        if not turns or turns[-1].role != "user":
            raise ValueError("the conversation must end with a user message")
        budget = self.window - self.reserve_for_reply(max_new_tokens)
        start = min(conversation.context_start, len(turns) - 1)
        segments, generation = self._segments(conversation, start)
        total = sum(map(len, segments)) + len(generation)
        dropped = 0
        if total > budget:  # drop whole oldest turns, to about half the window (see prompt.py)
            target = min(budget, self.window // 2)
            offset = 1 if conversation.system else 0
            lengths = [len(s) for s in segments[offset:]]
            while start < len(turns) - 1 and (total > target or turns[start].role != "user"):
                total -= lengths[dropped]
                start += 1
                dropped += 1
            segments, generation = self._segments(conversation, start)
        conversation.context_start = start
        ids = [i for s in segments for i in s] + generation
        return Prompt(ids=ids[-budget:], dropped_turns=dropped)

    def refit(self, conversation: Conversation, ids_in_context: list[int], reply_ids: list[int]) -> list[int]:
        """The window filled up mid-reply: drop old turns to about half the window and return the
        new context, ending with the reply so far."""
        half = self.window // 2
        turns = conversation.turns
        start = conversation.context_start
        while True:
            segments, generation = self._segments(conversation, start)
            ids = [i for s in segments for i in s] + generation + list(reply_ids)
            if len(ids) <= half or start >= len(turns) - 1:
                break
            start += 1
        conversation.context_start = start
        return ids[-half:]

    def reply_body_ids(self, turn: Turn) -> list[int]:
        """The ids of an assistant turn's content (what a continuation extends), reusing the
        ids it was generated as."""
        if turn.ids is not None and turn.ids_key == self.key:
            return reuse_ids(self.tokenizer, turn.text, turn.ids)
        return self.tokenizer.encode(turn.text)

    def finished_turn_ids(self, reply_text: str, reply_ids: list[int]) -> list[int]:
        """What an assistant turn keeps: the ids the model generated, reused by the next prompt."""
        return list(reply_ids)

    # -- segments ------------------------------------------------------------------------------

    def _messages(self, conversation: Conversation, start: int, contents: list[str] | None = None) -> list[dict]:
        turns = conversation.turns[start:]
        roles = (["system"] if conversation.system else []) + [t.role for t in turns]
        texts = contents if contents is not None else ([conversation.system] if conversation.system else []) + [t.text for t in turns]
        return [{"role": r, "content": c} for r, c in zip(roles, texts)]

    def _segments(self, conversation: Conversation, start: int) -> tuple[list[list[int]], list[int]]:
        """Ids per message (system first, if any) and of the generation prompt."""
        real = self._messages(conversation, start)
        turns = conversation.turns[start:]
        owners = ([None] if conversation.system else []) + list(turns)
        marked = [dict(m, content=_PLACEHOLDER.format(i)) for i, m in enumerate(real)]
        render = self.template.render
        prefix = render([])  # what the template writes before any message (a BOS, maybe)
        skeletons, previous = [], prefix
        for k in range(len(marked) + 1):
            last = k == len(marked)
            current = render(marked, add_generation_prompt=True) if last else render(marked[: k + 1])
            if not current.startswith(previous):
                return self._whole(real)
            skeletons.append(current[len(previous) :])
            previous = current
        full = render(real, add_generation_prompt=True)
        for texts in ([m["content"] for m in real], [m["content"].strip() for m in real]):  # `| trim`
            if prefix + "".join(_fill(s, texts) for s in skeletons) == full:
                break
        else:
            return self._whole(real)
        segments = []
        for k, skeleton in enumerate(skeletons[:-1]):
            owner = owners[k]
            reply = owner.ids if (owner is not None and owner.role == "assistant" and owner.ids_key == self.key) else None
            ids = self._encode_segment((prefix if k == 0 else "") + skeleton, texts, reply)
            segments.append(ids)
            if owner is not None:
                self._segment_ids[owner] = ids
        return segments, self._encode_segment(skeletons[-1], texts, None)

    def _encode_segment(self, skeleton: str, texts: list[str], reply_ids: list[int] | None) -> list[int]:
        """Encode one segment: markers special, contents plain, a generated reply as generated."""
        ids: list[int] = []
        for text, is_content in _pieces(skeleton, texts):
            if not is_content:
                ids += self.tokenizer.encode_marked(text)
            elif reply_ids:
                ids += reuse_ids(self.tokenizer, text, reply_ids)
            else:
                ids += self.tokenizer.encode(text)
        return ids

    def _whole(self, real: list[dict]) -> tuple[list[list[int]], list[int]]:
        """A template that is not prefix-stable: the whole prompt in one piece, contents plain."""
        text = self.template.render(real, add_generation_prompt=True)
        spans, pos = [], 0
        for m in real:
            found = text.find(m["content"], pos) if m["content"] else -1
            if found >= 0:
                spans.append((found, found + len(m["content"])))
                pos = found + len(m["content"])
        return [], self.tokenizer.encode_marked(text, spans)


def _pieces(skeleton: str, texts: list[str]) -> list[tuple[str, bool]]:
    """The skeleton split into template text (False) and the message contents its placeholders
    stand for (True)."""
    out, rest = [], skeleton
    while (a := rest.find("\ue000")) >= 0:
        b = rest.index("\ue001", a)
        out += [(rest[:a], False), (texts[int(rest[a + 1 : b])], True)]
        rest = rest[b + 1 :]
    return out + [(rest, False)]


def _fill(skeleton: str, texts: list[str]) -> str:
    return "".join(text for text, _ in _pieces(skeleton, texts))
