"""The backend that runs a checkpoint in this process (see backend.py for the interface).

Loading is slow (torch import, reading weights), so front ends call `LocalBackend.load` in a
worker. One `Generator` and its KV cache live as long as the backend; prompts are built by
`PromptBuilder` so consecutive turns share a prefix with what the cache holds.
"""

from __future__ import annotations

import threading
from functools import partial
from pathlib import Path
from typing import Iterator

from ..engine import torch_thread
from ..engine.events import ContextTrimmed, Event, Finished
from ..engine.settings import SamplingSettings
from .backend import BackendInfo
from .conversation import Conversation
from .jinja_template import JinjaChatTemplate, JinjaPromptBuilder
from .prompt import PromptBuilder
from .template import ChatTemplate

_DTYPE_NAMES = {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}


class LocalBackend:
    def __init__(self, generator, template: ChatTemplate, info: BackendInfo, meta: dict | None = None) -> None:
        self.generator = generator
        self.tokenizer = generator.tokenizer
        self.template = template
        self.info = info
        self.meta = meta or {}
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
        """Load a checkpoint of any supported format, or an installed model by name (see
        models.py). Raises CheckpointError (one line) on bad files. `context` caps the context
        window; `progress(what, fraction)` reports loading progress (called on the torch thread).
        The work runs on the torch thread (see engine/torch_thread.py), like every reply."""
        from .models import resolve_model

        path = resolve_model(path)
        return torch_thread.call(cls._load, path, device, dtype, template, compile, n_head, context, progress)

    @classmethod
    def _load(cls, path, device, dtype, template, compile, n_head, context=None, progress=None) -> "LocalBackend":
        from ..engine.generator import Generator
        from ..engine.tokenizer import Tokenizer, TokenizerError
        from ..model import CheckpointError, load_checkpoint, pack_linears, pick_device, pick_precision

        torch_device = pick_device(device)
        float_dtype, bits = pick_precision(dtype, torch_device)
        ckpt = load_checkpoint(path, device=torch_device, dtype=float_dtype, n_head=n_head,
                               context=context, progress=progress)
        spec = ckpt.meta.get("tokenizer")
        if spec is None and ckpt.config.vocab_size < 50257:
            raise CheckpointError(
                f"{ckpt.path}: no tokenizer inside, and its vocabulary ({ckpt.config.vocab_size}) is too "
                "small for GPT-2's; convert it with a tokenizer spec (see README)"
            )
        compile = bool(compile) if compile is not None else torch_device.type == "cuda"
        parameters = ckpt.model.num_params()  # counted before packing turns weights into buffers
        if not compile and not pack_linears(ckpt.model, bits) and bits:  # CPU only; a no-op elsewhere
            raise ValueError(f"dtype {dtype!r}: this torch build has no weight-only int{bits} kernel; use bf16 or fp32")
        try:
            tokenizer = Tokenizer.from_spec(spec)
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
            dtype=f"int{bits}" if bits else _DTYPE_NAMES.get(str(next(ckpt.model.parameters()).dtype), "?"),
            context_window=ckpt.config.block_size,
            parameters=parameters,
            source=str(ckpt.path),
        )
        return cls(generator, template, info, ckpt.meta)

    def context_tokens(self, conversation: Conversation, settings: SamplingSettings) -> int:
        system = self.prompts.system_ids(conversation)
        turns = conversation.turns[conversation.context_start :]
        return len(system) + sum(len(self.prompts.turn_ids(t)) for t in turns)

    def reply(
        self,
        conversation: Conversation,
        settings: SamplingSettings,
        *,
        cancel: threading.Event | None = None,
        inspect: int = 0,
    ) -> Iterator[Event]:
        """Stream the next assistant turn and append it to `conversation` before `Finished`."""
        prompt = self.prompts.build(conversation, settings.max_new_tokens)
        if prompt.dropped_turns:
            yield ContextTrimmed(prompt.dropped_turns, len(prompt.ids))
        trimmed: list[int] = []

        def refit(ids: list[int]) -> list[int]:
            reply_ids = ids[len(prompt.ids) :] if not trimmed else ids[trimmed[-1] :]
            before = conversation.context_start
            new = self.prompts.refit(conversation, ids, reply_ids)
            trimmed.append(max(0, len(new) - len(reply_ids)))
            events.append(ContextTrimmed(conversation.context_start - before, len(new)))
            return new

        events: list[Event] = []
        stream = partial(self.generator.stream, prompt.ids, settings, stop=self.template.stop, cancel=cancel,
                         on_context_full=refit, inspect=inspect)
        for event in torch_thread.iterate(stream):  # generated on the torch thread, consumed here
            if events:  # a refit happened during the last step: report it in order
                yield from events
                events.clear()
            if isinstance(event, Finished):
                self._append_reply(conversation, event)
            yield event

    def _append_reply(self, conversation: Conversation, done: Finished) -> None:
        text = done.text.strip()
        stopped = done.stop_reason in ("cancelled", "error")
        note = {"cancelled": "stopped", "length": "cut at max_new_tokens"}.get(done.stop_reason, "")
        if done.error:
            note = f"error: {done.error}"
        turn = conversation.add("assistant", text, stopped=stopped, note=note)
        turn.ids = self.prompts.finished_turn_ids(done.text, list(done.token_ids))
        turn.ids_key = self.prompts.key


def _jinja_template(meta: dict, tokenizer) -> JinjaChatTemplate | None:
    """The model's own Jinja chat template, if it has one (Hugging Face folders, GGUF files)."""
    source = meta.get("chat_template_jinja")
    if not source:
        return None
    bos, eos = (tokenizer.decode([i]) if i is not None else "" for i in (tokenizer.bos_id, tokenizer.eot_id))
    return JinjaChatTemplate(source, bos_token=bos, eos_token=eos).check()
