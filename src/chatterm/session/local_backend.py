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
from .prompt import PromptBuilder
from .template import ChatTemplate


class LocalBackend:
    def __init__(self, generator, template: ChatTemplate, info: BackendInfo, meta: dict | None = None) -> None:
        self.generator = generator
        self.tokenizer = generator.tokenizer
        self.template = template
        self.info = info
        self.meta = meta or {}
        self.prompts = PromptBuilder(self.tokenizer, template, info.context_window)

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
    ) -> "LocalBackend":
        """Load a checkpoint of any supported format. Raises CheckpointError (one line) on bad files.
        The work runs on the torch thread (see engine/torch_thread.py), like every reply."""
        return torch_thread.call(cls._load, path, device, dtype, template, compile, n_head)

    @classmethod
    def _load(cls, path, device, dtype, template, compile, n_head) -> "LocalBackend":
        from ..engine.generator import Generator
        from ..engine.tokenizer import Tokenizer, TokenizerError
        from ..model import CheckpointError, load_checkpoint, pack_linears, pick_device, pick_dtype
        from ..model.device import dtype_name
        from ..model.errors import reading

        torch_device = pick_device(device)
        ckpt = load_checkpoint(path, device=torch_device, dtype=pick_dtype(dtype, torch_device), n_head=n_head)
        spec = ckpt.meta.get("tokenizer")
        if spec is None and ckpt.config.vocab_size < 50257:
            raise CheckpointError(
                f"{ckpt.path}: no tokenizer inside, and its vocabulary ({ckpt.config.vocab_size}) is too "
                "small for GPT-2's; convert it with a tokenizer spec (see README)"
            )
        compile = bool(compile) if compile is not None else torch_device.type == "cuda"
        parameters = ckpt.model.num_params()  # counted before packing turns weights into buffers
        if not compile:
            pack_linears(ckpt.model)  # CPU only; 2-2.5x faster matmuls, a no-op elsewhere
        try:
            with reading(ckpt.path, "its tokenizer"):  # any failure, a Rust panic included
                tokenizer = Tokenizer.from_spec(spec)
            generator = Generator(ckpt.model, tokenizer, compile=compile)
        except (TokenizerError, ValueError) as e:
            raise CheckpointError(f"{ckpt.path}: {e}") from e
        if template is None:
            try:
                template = ChatTemplate.from_dict(ckpt.meta.get("chat_template"))
            except (TypeError, ValueError) as e:
                raise CheckpointError(f"{ckpt.path}: bad chat template ({e})") from e
        info = BackendInfo(
            name=ckpt.name,
            device=str(torch_device),
            dtype=dtype_name(next(ckpt.model.parameters()).dtype),
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
