"""The Python API: a loaded model with text-in, text-out helpers over a backend.

This is a thin layer: `Model` holds the backend that `open_backend` returns (for a checkpoint,
a `LocalBackend`: tokenizer, template, KV-cached generator) and offers the three things scripts
need: stream text, complete text, read logits (a server's backend gives no logits: one-line
ValueError). Every torch call runs on the torch thread (engine/torch_thread.py), whichever thread
the script calls from. `close()`, or a `with` block, lets go of the model or the server's
connections.
"""

from __future__ import annotations

from typing import Iterator

from .engine.events import Event, Finished, TextDelta, run_to_end
from .engine.settings import SamplingSettings
from .session.backends.contract import ChatBackend
from .session.backends.factory import open_backend
from .session.user.folders import default_checkpoint


class Model:
    def __init__(self, backend: ChatBackend) -> None:
        self.backend = backend
        self.tokenizer = backend.tokenizer  # None for a remote backend
        self.info = backend.info

    @classmethod
    def load(cls, path=None, *, device: str | None = None, dtype: str | None = None, n_head: int | None = None) -> "Model":
        return cls(open_backend(path or default_checkpoint(), device=device, dtype=dtype, n_head=n_head))

    def settings(self, **values) -> SamplingSettings:
        """SamplingSettings with `values` applied (validated)."""
        settings = SamplingSettings()
        settings.update(values)
        return settings

    def stream(self, prompt: str, settings: SamplingSettings | None = None, **values) -> Iterator[Event]:
        """Events (TextDelta, TokenStep, Finished) for a completion of `prompt`."""
        settings = settings or self.settings(**values)
        return self.backend.complete_stream(prompt, settings)

    def stream_text(self, prompt: str, settings: SamplingSettings | None = None, **values) -> Iterator[str]:
        for event in self.stream(prompt, settings, **values):
            if isinstance(event, TextDelta):
                yield event.text

    def complete(self, prompt: str, settings: SamplingSettings | None = None, **values) -> Finished:
        return run_to_end(self.stream(prompt, settings, **values))

    def logits(self, ids: list[int]):
        """Float32 logits (len(ids), vocab) for every position, uncached."""
        return self.backend.logits(ids)

    def close(self) -> None:
        """Let go of the model (or the server's connections); the Model is not used afterwards."""
        self.backend.close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
