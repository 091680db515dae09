"""The Python API: a loaded model with text-in, text-out helpers over the engine.

This is a thin layer: `Model` holds a `LocalBackend` (checkpoint, tokenizer, template,
KV-cached generator) and offers the three things scripts need: stream text, complete text, read
logits.
"""

from __future__ import annotations

from typing import Iterator

from .engine.events import Finished, TextDelta
from .engine.settings import SamplingSettings
from .session.config import default_checkpoint
from .session.local_backend import LocalBackend


class Model:
    def __init__(self, backend: LocalBackend) -> None:
        self.backend = backend
        self.tokenizer = backend.tokenizer
        self.generator = backend.generator
        self.info = backend.info

    @classmethod
    def load(cls, path=None, *, device: str | None = None, dtype: str | None = None, n_head: int | None = None) -> "Model":
        return cls(LocalBackend.load(path or default_checkpoint(), device=device, dtype=dtype, n_head=n_head))

    def settings(self, **values) -> SamplingSettings:
        """SamplingSettings with `values` applied (validated)."""
        settings = SamplingSettings()
        settings.update(values)
        return settings

    def stream(self, prompt: str, settings: SamplingSettings | None = None, **values):
        """Events (TextDelta, TokenStep, Finished) for a completion of `prompt`."""
        settings = settings or self.settings(**values)
        ids = self.tokenizer.encode(prompt)[-(self.info.context_window - 1) :]
        return self.generator.stream(ids, settings)

    def stream_text(self, prompt: str, settings: SamplingSettings | None = None, **values) -> Iterator[str]:
        for event in self.stream(prompt, settings, **values):
            if isinstance(event, TextDelta):
                yield event.text

    def complete(self, prompt: str, settings: SamplingSettings | None = None, **values) -> Finished:
        for event in self.stream(prompt, settings, **values):
            if isinstance(event, Finished):
                return event
        raise AssertionError("stream ended without Finished")  # pragma: no cover

    def logits(self, ids: list[int]):
        """Float32 logits (len(ids), vocab) for every position, uncached."""
        return self.generator.logits(ids)
