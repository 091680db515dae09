"""The autoregressive loop: prompt ids in, a stream of events out, with a reused KV cache.

`Generator` owns one model, its tokenizer and one preallocated KV cache, and remembers which
token ids the cache holds. A new prompt that shares a prefix with them (the next turn of a chat,
a retry, an undo) only prefills the tokens after the shared prefix.

The contract: this module knows token ids and bytes, nothing of conversations or chat templates.
`stream()` is a generator of events (see events.py); `complete()` is a blocking wrapper. Settings
are read at every step, cancellation is checked at every step, and the decode step is a small
function that `torch.compile` can turn into a CUDA graph.
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Callable, Iterator

import torch

from ..model import GPT, KVCache
from .detokenizer import StreamingDetokenizer
from .events import Event, Finished, TextDelta, TokenStep
from .sampling import sample
from .settings import SamplingSettings
from .stop import StopStringMatcher
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
        self.cached_ids: list[int] = []  # the ids whose keys/values the cache holds, in order
        self._step = torch.compile(_decode_step, mode="reduce-overhead", fullgraph=True) if compile else _decode_step
        self._lock = threading.Lock()  # one stream at a time owns the cache

    # -- building blocks -----------------------------------------------------------------------

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
        shared = _common_prefix(self.cached_ids, ids)
        shared = min(shared, len(ids) - 1)  # recompute at least the last id: we need its logits
        self.cache.truncate(shared)
        self.cached_ids = self.cached_ids[:shared]
        new = torch.tensor([ids[shared:]], dtype=torch.long, device=self.device)
        positions = torch.arange(shared, len(ids), device=self.device)
        logits = self.model(new, positions, self.cache, last_logits_only=True)[0, -1]
        self.cache.commit(len(ids) - shared)
        self.cached_ids = list(ids)
        return logits, len(ids) - shared

    @torch.inference_mode()
    def decode(self, token_id: int) -> torch.Tensor:
        """Append one token to the cache; return the logits for the token after it."""
        pos = self.cache.length
        token = torch.tensor([[token_id]], dtype=torch.long, device=self.device)
        input_pos = torch.tensor([pos], dtype=torch.long, device=self.device)
        logits = self._step(self.model, token, input_pos, self.cache)
        self.cache.commit(1)
        self.cached_ids.append(token_id)
        return logits

    # -- streaming -----------------------------------------------------------------------------

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
        """Stream a completion of `prompt_ids`. `settings` is read live at every step; `stop`
        strings (with settings.stop) end the reply; with `inspect` > 0 each token comes with
        that many top candidates. The last event is always `Finished`."""
        with self._lock, torch.inference_mode():
            yield from self._stream(prompt_ids, settings, stop, cancel, on_context_full, inspect)

    def _stream(self, prompt_ids, settings, stop, cancel, on_context_full, inspect) -> Iterator[Event]:
        t0 = time.perf_counter()
        ttft = 0.0
        detok = StreamingDetokenizer(self.tokenizer.token_bytes)
        matcher = StopStringMatcher([*stop, *settings.stop])
        ids = list(prompt_ids)
        generated: list[int] = []
        text: list[str] = []
        reason, error, prefilled = "length", None, 0
        seed = settings.seed
        rng = torch.Generator(device=self.device).manual_seed(seed if seed is not None else secrets.randbits(63))
        vocab_limit = self.tokenizer.n_vocab
        stop_ids = self.tokenizer.stop_ids  # end of text, end of turn: the reply is over
        try:
            logits, prefilled = self.prefill(ids)
            while True:
                if len(generated) >= settings.max_new_tokens:
                    reason = "length"
                    break
                if cancel is not None and cancel.is_set():
                    reason = "cancelled"
                    break
                if settings.seed != seed:  # a new seed set mid-reply takes effect now
                    seed = settings.seed
                    rng.manual_seed(seed if seed is not None else secrets.randbits(63))
                window = settings.repetition_window or len(ids)
                recent = torch.tensor(ids[-window:], dtype=torch.long, device=self.device)
                choice = sample(logits, recent, settings, rng, vocab_limit=vocab_limit, n_candidates=inspect)
                if not generated:
                    ttft = time.perf_counter() - t0
                token = choice.token_id
                if token in stop_ids:
                    reason = "eos"
                    break
                generated.append(token)
                ids.append(token)
                if inspect:
                    yield TokenStep(
                        index=len(generated) - 1,
                        token_id=token,
                        text=self.tokenizer.token_text(token),
                        prob=choice.prob,
                        candidates=tuple((i, self.tokenizer.token_text(i), p) for i, p in choice.candidates),
                    )
                safe, hit = matcher.feed(detok.add(token))
                if safe:
                    text.append(safe)
                    yield TextDelta(safe)
                if hit:
                    reason = "stop"
                    break
                if len(ids) <= self.context_window:  # room for this token's position
                    logits = self.decode(token)
                elif on_context_full is not None:
                    ids = on_context_full(ids)
                    logits, _ = self.prefill(ids)
                else:
                    reason = "length"
                    break
        except (FloatingPointError, RuntimeError, ValueError) as e:  # NaN logits, out of memory, ...
            reason, error = "error", _describe_error(e)
        if reason != "stop":
            tail, hit = matcher.feed(detok.flush())
            tail += "" if hit else matcher.flush()
            if tail:
                text.append(tail)
                yield TextDelta(tail)
        reply = "".join(text)
        yield Finished(
            text=reply,
            stop_reason=reason,
            prompt_tokens=len(prompt_ids),
            prefill_tokens=prefilled,
            new_tokens=len(generated),
            ttft_s=ttft,
            elapsed_s=time.perf_counter() - t0,
            token_ids=tuple(self._ids_within(generated, reply)),
            error=error,
        )

    def complete(self, prompt_ids: list[int], settings: SamplingSettings, **kwargs) -> Finished:
        """Blocking: run `stream` to the end and return its `Finished` record."""
        for event in self.stream(prompt_ids, settings, **kwargs):
            if isinstance(event, Finished):
                return event
        raise AssertionError("stream ended without Finished")  # pragma: no cover

    def _ids_within(self, generated: list[int], reply: str) -> list[int]:
        """The longest prefix of `generated` whose bytes lie wholly inside `reply`."""
        target = reply.encode("utf-8")
        out, used = [], 0
        for token in generated:
            raw = self.tokenizer.token_bytes(token)
            if target[used : used + len(raw)] != raw:
                break
            out.append(token)
            used += len(raw)
        return out


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _describe_error(e: BaseException) -> str:
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "out of memory" in message.lower():
        return "the device ran out of memory; try a shorter context, a smaller model or --dtype bf16"
    return message
