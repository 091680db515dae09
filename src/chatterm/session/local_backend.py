"""The backend that runs a checkpoint in this process (see backend.py for the interface).

Loading is slow (torch import, reading weights), so front ends open it (session/backends.py)
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

from ..engine import torch_thread
from ..engine.events import ContextTrimmed, Event, Finished
from ..engine.settings import SamplingSettings
from .backend import BackendInfo
from .conversation import Conversation
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
            dtype=_DTYPE_NAMES.get(str(next(ckpt.model.parameters()).dtype), "?"),
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
        """Stream the next assistant turn (see ChatBackend.reply). The turn is not appended here;
        `Finished` carries the ids it will occupy in the context (`context_ids`, `ids_key`)."""
        prompt = self.prompts.build(conversation, settings.max_new_tokens)
        if prompt.dropped_turns:
            yield ContextTrimmed(prompt.dropped_turns, len(prompt.ids))
        yield from torch_thread.iterate(partial(self._reply_events, conversation, settings, prompt.ids, cancel, inspect))

    def _reply_events(self, conversation, settings, prompt_ids, cancel, inspect) -> Iterator[Event]:
        """Runs on the torch thread: the generator's events, with a ContextTrimmed after any
        refit, and `Finished` completed with the turn's context ids."""
        trims: list[ContextTrimmed] = []
        reply_start = [len(prompt_ids)]  # where the reply's ids begin in the current context

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
                event = replace(event, context_ids=tuple(self.prompts.finished_turn_ids(event.text, list(event.token_ids))),
                                ids_key=self.prompts.key)
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
        return torch_thread.iterate(partial(self.generator.stream, ids, settings, cancel=cancel, inspect=inspect))

    def logits(self, ids: list[int]):
        """Float32 logits (len(ids), vocab) for every position of `ids`, uncached, computed on
        the torch thread."""
        return torch_thread.call(self.generator.logits, list(ids))
