"""A model's own Jinja chat template, and the prompt builder that goes with it.

`JinjaChatTemplate.render(messages, add_generation_prompt)` renders the template as transformers'
`apply_chat_template` does (the environment and its bounds: session/prompts/template_sandbox.py), with
`bos_token`, `eos_token`, and `tools` and `documents` unset. Thinking templates render as their
defaults say (Qwen3 thinks), as in transformers. A template that only renders with a list of tools
(a tool-use variant) is one clear line: chatterm's chats send none.

`JinjaPromptBuilder` has `PromptBuilder`'s interface (session/prompts/prompt.py), but cannot render turns
one at a time: a template may open with a default system prompt, or render the first turn
differently. So it renders the whole conversation, and splits it into one segment per turn by
rendering the conversations transformers would be given on the way: each prefix that ends with a
user message, with the generation prompt, and each that ends with a reply, without it (never an
empty list, nor a lone system prompt: real templates index `messages[0]`, or refuse a system
prompt that is not followed by a user message). A user turn's segment thus ends with the
generation prompt, the system prompt rides with the first turn, and a reply's segment is its
text and the end of its turn. Where a prefix's rendering is not the start of the next one (a
template that drops old thinking, say), the whole prompt is encoded in one go and only the cache's
common-prefix reuse applies.

Each segment is encoded with the template's markers as special tokens and the message content as
plain text (`encode_marked`), found by rendering once more with placeholder contents: a message
that contains `<|im_end|>` neither ends its turn nor opens another. An assistant segment reuses the
ids the model generated (kept on the turn), so the next prompt repeats the previous prompt and
reply exactly and only the new turn is prefilled.
"""

from __future__ import annotations

import hashlib
import weakref
from dataclasses import dataclass
from typing import Sequence

from ..chats.conversation import MAX_MESSAGE_CHARS, Conversation, Turn
from .prompt import Prompt, reuse_ids
from .prompt_fit import drop_oldest, first_in_context, fit_target, fit_turns, keep_tail, prompt_budget
from .template import chat_messages
from .template_sandbox import MAX_RENDERED_CHARS, TemplateError, compile_template, render

_PLACEHOLDER = "\ue000{}\ue001"  # private-use characters: no template or message contains them
# A prompt builder lowers the most a template may write (MAX_RENDERED_CHARS) to what its context
# window can use: the newest message, the history the window holds at 16 characters a token (4 is
# usual), and TEMPLATE_TEXT_CHARS of the template's own text (default system prompts run to 6,000).
TEMPLATE_TEXT_CHARS = 65_536
_TOOL_NAMES = ("tools", "functions")


@dataclass(frozen=True)
class JinjaChatTemplate:
    source: str  # the Jinja text
    bos_token: str = ""
    eos_token: str = ""
    stop: tuple[str, ...] = ()  # stop strings; end-of-turn tokens stop replies anyway
    enable_thinking: bool | None = None  # Qwen3's switch, passed to the template when set

    def render(self, messages: list[dict], add_generation_prompt: bool = False,
               max_chars: int = MAX_RENDERED_CHARS) -> str:
        """The conversation as the model reads it; TemplateError (one line) when it fails or
        writes more than `max_chars` characters."""
        template = compile_template(self.source)
        variables = dict(messages=messages, add_generation_prompt=add_generation_prompt, tools=None,
                         documents=None, bos_token=self.bos_token, eos_token=self.eos_token,
                         **({} if self.enable_thinking is None else {"enable_thinking": self.enable_thinking}))
        try:
            return render(template, max_chars, **variables)
        except TemplateError as e:
            if str(e).startswith("the chat template failed") and self._needs_tools(template, variables, str(e)):
                raise TemplateError("this chat template only renders with a list of tools (a function-calling "
                                    "variant), and chatterm's chats send none; use the model's plain chat template") from e
            raise

    def _needs_tools(self, template, variables: dict, failure: str) -> bool:
        """Whether the template failed on its tools being undefined, or renders given empty lists."""
        if not any(name in self.source for name in _TOOL_NAMES):
            return False
        if any(f"'{name}' is undefined" in failure for name in _TOOL_NAMES):
            return True
        try:
            render(template, MAX_RENDERED_CHARS, **dict(variables, **dict.fromkeys(_TOOL_NAMES, [])))
        except TemplateError:
            return False
        return True

    def check(self) -> "JinjaChatTemplate":
        """Raise TemplateError now if the template does not even compile."""
        compile_template(self.source)
        return self


class JinjaPromptBuilder:
    def __init__(self, tokenizer, template: JinjaChatTemplate, context_window: int) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.window = context_window
        self.max_chars = min(MAX_RENDERED_CHARS, MAX_MESSAGE_CHARS + 16 * context_window + TEMPLATE_TEXT_CHARS)
        source = f"{template.source}\0{template.bos_token}\0{template.eos_token}".encode("utf-8")
        self.key = f"{tokenizer.key}:{hashlib.sha256(source).hexdigest()[:16]}"  # content, as PromptBuilder's
        self._segment_ids: weakref.WeakKeyDictionary[Turn, list[int]] = weakref.WeakKeyDictionary()
        self._skeletons: dict[tuple[tuple[str, ...], bool], str] = {}  # see _skeleton

    @property
    def template(self) -> JinjaChatTemplate:
        return self._template

    @template.setter
    def template(self, template: JinjaChatTemplate) -> None:
        """A new template (`/think` changes its enable_thinking): what was rendered with the old
        one is forgotten, since the renderings are cached by the turns' roles alone."""
        if getattr(self, "_template", None) != template:
            self._segment_ids = weakref.WeakKeyDictionary()
            self._skeletons = {}
        self._template = template

    # -- PromptBuilder's interface -------------------------------------------------------------

    def turn_ids(self, turn: Turn) -> list[int]:
        """The ids of the turn's segment in the last prompt built (an estimate before that)."""
        if turn in self._segment_ids:
            return self._segment_ids[turn]
        return self.tokenizer.encode(turn.text)

    def system_ids(self, conversation: Conversation) -> list[int]:
        """Nothing of its own: the system prompt rides in the first turn's segment (see above)."""
        return []

    def build(self, conversation: Conversation, max_new_tokens: int) -> Prompt:
        """Prompt ids asking for the next assistant turn; may advance `context_start`."""
        turns = conversation.turns
        first = first_in_context(turns, conversation.context_start)
        budget = prompt_budget(self.window, max_new_tokens)
        # A turn's length is its segment's in the last rendering (an estimate before that), so
        # the prompt is rendered again after each round of drops.
        start, ids = self._fit(conversation, first, budget, turn_size=lambda i: len(self.turn_ids(turns[i])))
        return Prompt(ids=keep_tail([], ids, [], budget), dropped_turns=start - first)

    def refit(self, conversation: Conversation, ids_in_context: list[int], reply_ids: list[int]) -> list[int]:
        """The window filled up mid-reply: drop old turns to about half the window and return the
        new context, ending with the reply so far."""
        half = fit_target(self.window)
        _, ids = self._fit(conversation, conversation.context_start, half, reply_ids, open_on_user=False)
        return keep_tail([], ids, [], half)

    def _fit(self, conversation: Conversation, start: int, budget: int, reply_ids: Sequence[int] = (),
             **rule) -> tuple[int, list[int]]:
        """Advance `context_start` as prompt_fit.fit_turns says, measuring renderings of the
        prompt (ending with `reply_ids`); the first turn kept, and that prompt."""
        rendered: dict[int, list[int]] = {}

        def size(s: int) -> int:
            rendered[s] = self._ids(conversation, s) + list(reply_ids)
            return len(rendered[s])

        start = self._within_render_limit(conversation, start)
        start = fit_turns(conversation.turns, start, size, budget=budget, window=self.window, **rule)
        conversation.context_start = start
        if start not in rendered:
            size(start)
        return start, rendered[start]

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

    def _within_render_limit(self, conversation: Conversation, start: int) -> int:
        """The first turn from `start` on whose messages fit `max_chars` with the template's own
        text: a long saved chat opened on a model with a small window is cut before it is
        rendered (the window would drop those turns anyway), never refused."""
        turns = conversation.turns
        chars = len(conversation.system) + sum(len(t.text) for t in turns[start:])
        over = chars - (self.max_chars - TEMPLATE_TEXT_CHARS)  # counted in characters
        return drop_oldest(turns, start, over, lambda i: len(turns[i].text), keep=len(turns) - 1)

    def _ids(self, conversation: Conversation, start: int) -> list[int]:
        """The prompt for the turns from `start` on, ending with the generation prompt."""
        return [i for segment in self._segments(conversation, start) for i in segment]

    def _segments(self, conversation: Conversation, start: int) -> list[list[int]]:
        """Ids per turn from `start` on (module docstring), or the whole prompt as one piece."""
        real = chat_messages(conversation.system, conversation.turns[start:])
        turns = conversation.turns[start:]
        system = len(real) - len(turns)  # 1 with a system prompt, else 0
        marked = [dict(m, content=_PLACEHOLDER.format(i)) for i, m in enumerate(real)]
        full = self.template.render(real, True, self.max_chars)
        skeletons = self._turn_skeletons(marked, turns, system)
        texts = _contents("".join(skeletons), real, full) if skeletons else None
        if texts is None and self._skeletons:  # renderings kept from before may be stale (a date)
            self._skeletons.clear()
            skeletons = self._turn_skeletons(marked, turns, system)
            texts = _contents("".join(skeletons), real, full) if skeletons else None
        if texts is None:
            return [self._whole(real, marked, full)]
        segments = []
        for turn, skeleton in zip(turns, skeletons):
            reply = turn.ids if (turn.role == "assistant" and turn.ids_key == self.key) else None
            ids = self._encode_segment(skeleton, texts, reply)
            segments.append(ids)
            self._segment_ids[turn] = ids
        return segments

    def _turn_skeletons(self, marked: list[dict], turns: list[Turn], system: int) -> list[str] | None:
        """Each turn's part of the placeholder rendering, or None where rendering one more turn
        does not extend the rendering before it."""
        skeletons, previous = [], ""
        for k, turn in enumerate(turns):
            current = self._skeleton(marked[: system + k + 1], turn.role == "user")
            if not current.startswith(previous):
                return None
            skeletons.append(current[len(previous) :])
            previous = current
        return skeletons

    def _skeleton(self, marked: list[dict], add_generation_prompt: bool) -> str:
        """The rendering of messages whose contents are placeholders: it depends on their roles
        alone, so each is rendered once, and a prompt one exchange longer than the last renders
        only its new turns (a conversation of n turns would take n renders of it per turn). A
        template that writes the date renders differently the next day: _segments then starts
        afresh."""
        key = (tuple(m["role"] for m in marked), add_generation_prompt)
        if key not in self._skeletons:
            if len(self._skeletons) >= 4096:  # a bound, not a cache policy: long chats start afresh
                self._skeletons.clear()
            self._skeletons[key] = self.template.render(marked, add_generation_prompt, self.max_chars)
        return self._skeletons[key]

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

    def _whole(self, real: list[dict], marked: list[dict], full: str) -> list[int]:
        """A template that is not prefix-stable: the whole prompt `full` in one piece, contents
        plain, found where the placeholders render. A template that rewrites contents (Qwen3
        cuts a reply's thinking) has them looked for in order instead."""
        skeleton = self.template.render(marked, True, self.max_chars)
        texts = _contents(skeleton, real, full)
        if texts is not None:
            return self._encode_segment(skeleton, texts, None)
        spans, pos = [], 0
        for m in real:
            found = full.find(m["content"], pos) if m["content"] else -1
            if found >= 0:
                spans.append((found, found + len(m["content"])))
                pos = found + len(m["content"])
        return self.tokenizer.encode_marked(full, spans)


def _contents(skeleton: str, real: list[dict], full: str) -> list[str] | None:
    """The message contents as the template writes them, if filling the placeholders of
    `skeleton` with them gives `full`: as they are, or stripped (`| trim`)."""
    for texts in ([m["content"] for m in real], [m["content"].strip() for m in real]):
        if _fill(skeleton, texts) == full:
            return texts
    return None


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
