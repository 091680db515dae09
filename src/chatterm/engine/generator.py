"""The autoregressive loop over token ids, with a KV cache reused across calls.

`Generator` owns one model, its tokenizer and one preallocated KV cache, and remembers which
token ids the cache holds. A new prompt that shares a prefix with them (the next turn of a chat,
a retry, an undo) only prefills the tokens after the shared prefix.

Two layers:
- the token loop (`Generator.tokens` -> `TokenLoop`): prefill, sample, decode, refit when the
  window is full, cancel. Token ids and their probabilities out; no text, no stop strings.
- the text layer (`text_stream.py`, run by `Generator.stream`): the streaming detokenizer, stop
  strings with holdback, inspector steps and the `Finished` record, as engine events.
`complete()` is the blocking wrapper. Settings are read at every step, cancellation is checked
at every step, and the decode step is a small function that `torch.compile` can turn into a
CUDA graph. This module knows token ids and bytes, nothing of conversations or chat templates.
Callers run it on the torch thread (engine/torch_thread.py); front ends go through a backend.
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Callable, Iterator

import torch

from ..model import GPT, KVCache
from ..model.errors import first_line
from .events import Event, Finished, run_to_end
from .sampling import SampleResult, new_rng, sample
from .settings import SamplingSettings
from .threads import ThreadTuner
from .tokenizer import Tokenizer

# Called when the window is full mid-reply with every id in context (prompt + reply so far);
# returns a shorter list that ends with the same reply tokens, to prefill once and carry on.
ContextFullHandler = Callable[[list[int]], list[int]]


def _decode_step(model: GPT, token: torch.Tensor, input_pos: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """One new token (1, 1) at `input_pos` (1,) -> next-token logits (vocab,)."""
    return model(token, input_pos, cache)[0, -1]


class Generator:
    def __init__(self, model: GPT, tokenizer: Tokenizer, *, compile: bool = False) -> None:
        config = model.config
        if tokenizer.n_vocab > config.vocab_size:
            raise ValueError(
                f"the tokenizer has {tokenizer.n_vocab} tokens but the model's embedding only "
                f"{config.vocab_size} rows; this checkpoint's tokenizer does not belong to it"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.context_window = config.block_size
        self.cache = KVCache.for_model(model, static=compile)
        self._cached_ids: list[int] = []  # the ids whose keys/values the cache holds, in order
        self._step = torch.compile(_decode_step, mode="reduce-overhead", fullgraph=True) if compile else _decode_step
        self._compiled = compile
        self._lock = threading.Lock()  # one token loop at a time owns the cache
        # CPU decoding picks its thread count by measuring (threads.py): a busy core slows every
        # thread that waits for it
        self._threads = ThreadTuner(torch.get_num_threads()) if self.device.type == "cpu" and not compile else None

    # -- building blocks -----------------------------------------------------------------------

    @property
    def cached_ids(self) -> tuple[int, ...]:
        """The ids whose keys/values the cache holds (read-only; `reset()` forgets them)."""
        return tuple(self._cached_ids)

    def reset(self) -> None:
        """Forget what the cache holds: the next prompt is prefilled from its first token."""
        self._cached_ids.clear()

    @torch.inference_mode()
    def logits(self, ids: list[int]) -> torch.Tensor:
        """Logits (T, vocab) for every position of `ids`, without touching the cache."""
        idx = torch.tensor([ids], dtype=torch.long, device=self.device)
        return self.model(idx)[0].float()

    @torch.inference_mode()
    def prefill(self, ids: list[int]) -> tuple[torch.Tensor, int]:
        """Make the cache hold `ids`; return the last position's logits and how many ids were computed."""
        if not ids:
            raise ValueError("cannot generate from an empty prompt")
        if len(ids) > self.context_window:
            raise ValueError(f"prompt of {len(ids)} tokens exceeds the context window of {self.context_window}")
        shared = _common_prefix(self._cached_ids, ids)
        shared = min(shared, len(ids) - 1)  # recompute at least the last id: we need its logits
        del self._cached_ids[shared:]  # if the forward pass fails, the cache holds at most these
        new = torch.tensor([ids[shared:]], dtype=torch.long, device=self.device)
        positions = torch.arange(shared, len(ids), device=self.device)
        logits = self.model(new, positions, self.cache, last_logits_only=True)[0, -1]
        self._cached_ids.extend(ids[shared:])
        return logits, len(ids) - shared

    def restore_threads(self) -> None:
        """Give the process back the thread count it had: the tuner's choice is for decode steps
        only (a prompt's matmuls scale with threads, and the next model must not inherit it)."""
        if self._threads is not None and torch.get_num_threads() != self._threads.maximum:
            torch.set_num_threads(self._threads.maximum)

    def decode(self, token_id: int) -> torch.Tensor:
        """Append one token to the cache; return the logits for the token after it."""
        if torch.is_inference_mode_enabled():  # the token loop's (entering it again: ~10 us a token)
            return self._decode(token_id)
        with torch.inference_mode():
            return self._decode(token_id)

    def _decode(self, token_id: int) -> torch.Tensor:
        position = len(self._cached_ids)
        tuner = self._threads
        if tuner is not None and tuner.threads() != torch.get_num_threads():
            torch.set_num_threads(tuner.threads())
        started = time.perf_counter()
        # From Python ints in one kernel call where the model can (the fused CPU step), else
        # the forward pass on tensors
        logits = None if self._compiled else self.model.decode_token(token_id, position, self.cache)
        if logits is None:
            token = torch.tensor([[token_id]], dtype=torch.long, device=self.device)
            input_pos = torch.tensor([position], dtype=torch.long, device=self.device)
            logits = self._step(self.model, token, input_pos, self.cache)
        if tuner is not None:
            tuner.record(time.perf_counter() - started)
        self._cached_ids.append(token_id)
        return logits

    # -- the two layers ------------------------------------------------------------------------

    def tokens(
        self,
        prompt_ids: list[int],
        settings: SamplingSettings,
        *,
        cancel: threading.Event | None = None,
        on_context_full: ContextFullHandler | None = None,
        inspect: int = 0,
    ) -> "TokenLoop":
        """The token loop for a completion of `prompt_ids` (see TokenLoop)."""
        return TokenLoop(self, prompt_ids, settings, cancel, on_context_full, inspect)

    def stream(
        self,
        prompt_ids: list[int],
        settings: SamplingSettings,
        *,
        stop: tuple[str, ...] | list[str] = (),
        cancel: threading.Event | None = None,
        on_context_full: ContextFullHandler | None = None,
        inspect: int = 0,
    ) -> Iterator[Event]:
        """Stream a completion of `prompt_ids` as events. `settings` is read live at every step;
        `stop` strings (with settings.stop, read live too) end the reply; with `inspect` > 0 each
        token comes with that many top candidates. The last event is always `Finished`."""
        from .text_stream import text_events

        loop = self.tokens(prompt_ids, settings, cancel=cancel, on_context_full=on_context_full, inspect=inspect)
        return text_events(loop, self.tokenizer, settings, stop=stop, inspect=bool(inspect))

    def complete(self, prompt_ids: list[int], settings: SamplingSettings, **kwargs) -> Finished:
        """Blocking: run `stream` to the end and return its `Finished` record."""
        return run_to_end(self.stream(prompt_ids, settings, **kwargs))


class TokenLoop:
    """One completion's token loop. Iterating yields a `SampleResult` (token id, probability,
    candidates) per new token, before that token is decoded: a consumer that stops iterating
    (a stop string, say) never pays for its forward pass. End-of-text is not yielded.

    While and after it runs: `reason` ("length", "eos", "cancelled", "error"; a consumer that
    stops early sets its own, e.g. "stop"), `error` (one line), `prefill_tokens` (how many prompt
    ids were computed, the rest came from the cache), `token_ids` (the new ids so far),
    `started_at` / `first_token_at` (perf_counter times)."""

    def __init__(self, generator: Generator, prompt_ids, settings, cancel, on_context_full, inspect) -> None:
        self.generator = generator
        self.prompt_ids = list(prompt_ids)
        self.settings = settings
        self.cancel = cancel
        self.on_context_full = on_context_full
        self.inspect = inspect
        self.reason = "length"
        self.error: str | None = None
        self.prefill_tokens = 0
        self.token_ids: list[int] = []
        self.started_at = self.first_token_at = 0.0

    def __iter__(self) -> Iterator[SampleResult]:
        gen = self.generator
        with gen._lock, torch.inference_mode():
            self.started_at = time.perf_counter()
            try:
                yield from self._run(gen)
            except (FloatingPointError, RuntimeError, ValueError) as e:  # NaN logits, out of memory, ...
                self.reason, self.error = "error", _describe_error(e)
            finally:
                gen.restore_threads()

    def _run(self, gen: Generator) -> Iterator[SampleResult]:
        settings, cancel, generated = self.settings, self.cancel, self.token_ids
        ids = list(self.prompt_ids)
        seed = settings.seed
        rng = new_rng(seed if seed is not None else secrets.randbits(63))
        vocab_limit, window_size = gen.tokenizer.n_vocab, gen.context_window
        stop_ids = gen.tokenizer.stop_ids  # end of text, end of turn: the reply is over
        logits, self.prefill_tokens = gen.prefill(ids)
        while True:
            if len(generated) >= settings.max_new_tokens:
                self.reason = "length"
                return
            if cancel is not None and cancel.is_set():
                self.reason = "cancelled"
                return
            if settings.seed != seed:  # a new seed set mid-reply takes effect now
                seed = settings.seed
                rng = new_rng(seed if seed is not None else secrets.randbits(63))
            recent = ids[-(settings.repetition_window or len(ids)):] if settings.repetition_penalty != 1.0 else ()
            choice = sample(logits, recent, settings, rng, vocab_limit=vocab_limit, n_candidates=self.inspect)
            if not self.first_token_at:
                self.first_token_at = time.perf_counter()
            token = choice.token_id
            if token in stop_ids:
                self.reason = "eos"
                return
            generated.append(token)
            ids.append(token)
            yield choice
            if len(generated) >= settings.max_new_tokens or (cancel is not None and cancel.is_set()):
                continue  # ends at the top of the loop, without a forward pass for this token
            if len(ids) <= window_size:  # room for this token's position
                logits = gen.decode(token)
            elif self.on_context_full is not None:
                ids = self.on_context_full(ids)
                logits, _ = gen.prefill(ids)
            else:
                self.reason = "length"
                return


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _describe_error(e: BaseException) -> str:
    message = first_line(e)
    if "out of memory" in message.lower():
        return "the device ran out of memory; try a shorter context, a smaller model or --dtype bf16"
    return message
