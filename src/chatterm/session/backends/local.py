"""The backend that runs a checkpoint in this process (see contract.py for the interface).

Loading is slow (torch import, reading weights), so front ends open it (session/backends/factory.py)
in a worker. One `Generator` and its KV cache live as long as the backend; prompts are built by
`PromptBuilder` so consecutive turns share a prefix with what the cache holds.

Every torch call runs on the torch thread (engine/torch_thread.py): loading, replies, and the
plain completions and logits that `chatterm generate` and the Python API ask for. Callers on
any thread get the events (or results) handed over.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Iterator

from ...engine import torch_thread
from ...engine.events import ContextTrimmed, Event, Finished
from ...engine.settings import SamplingSettings
from ...engine.thinking import prompt_opens_thinking, split_thinking
from ..chats.conversation import Conversation
from ..prompts.jinja_template import JinjaChatTemplate, JinjaPromptBuilder
from ..prompts.prompt import PromptBuilder
from ..prompts.template import ChatTemplate
from .contract import BackendInfo


class LocalBackend:
    def __init__(self, generator, template: ChatTemplate, info: BackendInfo, meta: dict | None = None) -> None:
        self.generator = generator  # None once closed
        self.tokenizer = generator.tokenizer
        self.template = template
        self.info = info
        self.meta = meta or {}
        # What the front ends show (see ChatBackend): a model in this process honours every
        # setting, counts its own tokens and always has probabilities for the inspector.
        self.warnings: list[str] = []
        self.supported_settings: dict[str, str | None] = {}
        self.context_is_estimate = False
        self.inspector_note: str | None = None
        self.settings_apply_mid_reply = True
        builder = JinjaPromptBuilder if isinstance(template, JinjaChatTemplate) else PromptBuilder
        self.prompts = builder(self.tokenizer, template, info.context_window)

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        device: str | None = None,
        dtype: str | None = None,
        template: ChatTemplate | None = None,
        compile: bool | None = None,
        n_head: int | None = None,
        context: int | None = None,
        progress=None,
    ) -> "LocalBackend":
        """Load a checkpoint of any supported format. Raises CheckpointError (one line) on bad files.
        `context` caps the context window; `progress(what, fraction)` reports the loading of big
        models (called on the torch thread). The work runs on the torch thread (see
        engine/torch_thread.py), like every reply."""
        return torch_thread.call(cls._load, path, device, dtype, template, compile, n_head, context, progress)

    @classmethod
    def _load(cls, path, device, dtype, template, compile, n_head, context=None, progress=None) -> "LocalBackend":
        from ...engine.generator import Generator
        from ...engine.tokenizer import TokenizerError
        from ...engine.tokenizers import open_tokenizer
        from ...model import CheckpointError, load_checkpoint, pick_device, precision_name
        from ...model.cpu.linear import weights_label
        from ...model.errors import reading

        torch_device = pick_device(device)
        precision = precision_name(dtype, torch_device)
        ckpt = load_checkpoint(path, device=torch_device, precision=precision, inference=True, n_head=n_head,
                               context=context, progress=progress)
        spec = ckpt.meta.get("tokenizer")
        if spec is None and ckpt.config.vocab_size < 50257:
            raise CheckpointError(
                f"{ckpt.path}: no tokenizer inside, and its vocabulary ({ckpt.config.vocab_size}) is too "
                "small for GPT-2's; convert it with a tokenizer spec (see README)"
            )
        compile = bool(compile) if compile is not None else torch_device.type == "cuda"
        parameters = ckpt.config.num_params()
        weights = precision or weights_label(ckpt.model)  # as asked, or as stored: "Q4_K+Q6_K", "bf16", ...
        try:
            with reading(ckpt.path, "its tokenizer"):  # any failure, a Rust panic included
                tokenizer = open_tokenizer(spec)
            generator = Generator(ckpt.model, tokenizer, compile=compile)
        except (TokenizerError, ValueError) as e:
            raise CheckpointError(f"{ckpt.path}: {e}") from e
        if template is None:
            try:
                template = _jinja_template(ckpt.meta, tokenizer) or ChatTemplate.from_dict(ckpt.meta.get("chat_template"))
            except (TypeError, ValueError) as e:
                raise CheckpointError(f"{ckpt.path}: bad chat template ({e})") from e
        info = BackendInfo(
            name=ckpt.name,
            device=str(torch_device),
            dtype=weights,
            context_window=ckpt.config.block_size,
            parameters=parameters,
            source=str(ckpt.path),
        )
        backend = cls(generator, template, info, ckpt.meta)
        note = ckpt.model.decode_note  # a family the fused CPU decode step does not cover
        if note and torch_device.type == "cpu":
            backend.warnings.append(f"{ckpt.name}: {note}")
        return backend

    def context_tokens(self, conversation: Conversation, settings: SamplingSettings) -> int:
        system = self.prompts.system_ids(conversation)
        turns = conversation.turns[conversation.context_start :]
        return len(system) + sum(len(self.prompts.turn_ids(t)) for t in turns)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def reply(
        self,
        conversation: Conversation,
        settings: SamplingSettings,
        *,
        cancel: threading.Event | None = None,
        inspect: int = 0,
    ) -> Iterator[Event]:
        """Stream the next assistant turn (see ChatBackend.reply). The turn is not appended here;
        `Finished` carries the ids it will occupy in the context (`context_ids`, `ids_key`)."""
        self._use_thinking_setting(settings)
        prompt = self.prompts.build(conversation, settings.max_new_tokens)
        if prompt.dropped_turns:
            yield ContextTrimmed(prompt.dropped_turns, len(prompt.ids))
        events = torch_thread.iterate(partial(self._reply_events, conversation, settings, prompt.ids, cancel, inspect))
        yield from split_thinking(events, inside=self._opens_thinking(prompt.ids))

    def _use_thinking_setting(self, settings: SamplingSettings) -> None:
        """`/think on|off`: the model's own template takes it as `enable_thinking` (Qwen3's)."""
        if isinstance(self.template, JinjaChatTemplate):
            self.prompts.template = replace(self.template, enable_thinking=settings.thinking)

    def _opens_thinking(self, prompt_ids: list[int]) -> bool:
        """Whether the template opened a thinking block at the end of the prompt (R1 distills do)."""
        return prompt_opens_thinking(self.tokenizer.decode(list(prompt_ids[-32:])))

    def continue_reply(
        self,
        conversation: Conversation,
        settings: SamplingSettings,
        *,
        cancel: threading.Event | None = None,
        inspect: int = 0,
    ) -> Iterator[Event]:
        """Stream more of the last (assistant) turn (see ChatBackend.continue_reply). The prompt
        is the one that asked for that turn plus the ids it was generated as, so the cache
        still holds nearly all of it: only the last token or two are prefilled."""
        # The conversation up to the reply asks for the reply; its text so far counts as reply.
        head = conversation.up_to_last_reply()
        body = self.prompts.reply_body_ids(conversation.turns[-1])
        return self._continue_events(conversation, head, body, settings, cancel, inspect)

    def _continue_events(self, conversation, head, body, settings, cancel, inspect) -> Iterator[Event]:
        self._use_thinking_setting(settings)
        prompt = self.prompts.build(head, settings.max_new_tokens + len(body))
        conversation.context_start = head.context_start
        if prompt.dropped_turns:
            yield ContextTrimmed(prompt.dropped_turns, len(prompt.ids) + len(body))
        ids = (prompt.ids + body)[-(self.info.context_window - 1) :]
        events = torch_thread.iterate(partial(self._reply_events, head, settings, ids, cancel, inspect,
                                              reply_start=len(ids) - len(body), body=body))
        for event in split_thinking(events, inside=not body and self._opens_thinking(ids)):
            if isinstance(event, ContextTrimmed):
                conversation.context_start = head.context_start
            yield event

    def _reply_events(self, conversation, settings, prompt_ids, cancel, inspect, *, reply_start=None,
                      body=()) -> Iterator[Event]:
        """Runs on the torch thread: the generator's events, with a ContextTrimmed after any
        refit, and `Finished` completed with the turn's context ids. When continuing, `body`
        is the reply so far, the last ids of `prompt_ids`, from `reply_start` on."""
        trims: list[ContextTrimmed] = []
        reply_start = [len(prompt_ids) if reply_start is None else reply_start]  # where the reply's ids begin

        def refit(ids: list[int]) -> list[int]:
            reply_ids = ids[reply_start[0] :]
            before = conversation.context_start
            new = self.prompts.refit(conversation, ids, reply_ids)
            reply_start[0] = max(0, len(new) - len(reply_ids))
            trims.append(ContextTrimmed(conversation.context_start - before, len(new)))
            return new

        for event in self.generator.stream(prompt_ids, settings, stop=self.template.stop, cancel=cancel,
                                           on_context_full=refit, inspect=inspect):
            if trims:  # a refit happened during the last step: report it in order
                yield from trims
                trims.clear()
            if isinstance(event, Finished):
                text = self.tokenizer.decode(list(body)) + event.text
                ids = self.prompts.finished_turn_ids(text, [*body, *event.token_ids])
                event = replace(event, context_ids=tuple(ids), ids_key=self.prompts.key)
            yield event

    # -- plain completion (no chat template), for `chatterm generate` and the Python API ------

    def complete_stream(
        self,
        prompt: str | list[int],
        settings: SamplingSettings,
        *,
        cancel: threading.Event | None = None,
        inspect: int = 0,
    ) -> Iterator[Event]:
        """Stream a continuation of `prompt` (text, or token ids) as events, computed on the
        torch thread. The prompt keeps its last `context_window - 1` tokens."""
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
        ids = ids[-(self.info.context_window - 1) :]
        bos = self.tokenizer.bos_id
        if isinstance(prompt, str) and self.tokenizer.add_bos and bos is not None and ids[:1] != [bos]:
            # Models whose tokenizer asks for it (Llama's SentencePiece vocabularies) were trained
            # with every text starting at BOS, and transformers' generate adds it: so do we.
            ids = [bos] + ids[-(self.info.context_window - 2) :]
        return torch_thread.iterate(partial(self.generator.stream, ids, settings, cancel=cancel, inspect=inspect))

    def logits(self, ids: list[int]):
        """Float32 logits (len(ids), vocab) for every position of `ids`, uncached, computed on
        the torch thread."""
        return torch_thread.call(self.generator.logits, list(ids))

    def close(self) -> None:
        """Let go of the generator: the KV cache, and the weights unless a caller holds the model
        too (see ChatBackend.close). Any thread may: freeing runs no torch kernels, and a token
        loop still ending on the torch thread holds its own references until it returns."""
        if self.generator is None:  # closed already
            return
        on_cuda = self.generator.device.type == "cuda"
        self.generator = None
        if on_cuda:  # (on the CPU the memory goes back as the last reference goes)
            import gc

            import torch

            gc.collect()  # a compiled decode step's reference cycles hold the model
            torch.cuda.empty_cache()  # hand the freed blocks back to the driver (other processes)


def _jinja_template(meta: dict, tokenizer) -> JinjaChatTemplate | None:
    """The model's own Jinja chat template, if it has one (Hugging Face folders, GGUF files)."""
    source = meta.get("chat_template_jinja")
    if not source:
        return None
    bos, eos = (tokenizer.decode([i]) if i is not None else "" for i in (tokenizer.bos_id, tokenizer.eot_id))
    return JinjaChatTemplate(source, bos_token=bos, eos_token=eos).check()
