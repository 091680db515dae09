"""Turn one step's logits into the next token.

The filters are applied in the order, and with the formulas, of Hugging Face transformers:
repetition penalty -> temperature -> top-k -> top-p -> min-p -> a draw from a seeded random
generator (`new_rng(seed)`).
- repetition penalty: each recently seen id once; a positive logit is divided by the penalty,
  a negative one multiplied (both make the token less likely);
- top-k: keep logits >= the k-th largest (ties at the boundary are kept);
- top-p: sort ascending, drop tokens whose cumulative probability is <= 1 - p, so the token that
  crosses the threshold is kept;
- min-p: drop tokens whose probability is below min_p times the most likely token's.
Temperature 0 is exactly argmax of the penalized logits, whatever the seed. So is a temperature
so small that dividing the logits by it overflows float32 (1e-39 say): sampling tends to argmax
as the temperature goes to 0, and dividing would turn the largest logits into inf and the
distribution into NaN. Treating it as greedy gives the limit the user asked for; refusing it
would make a value inside the documented range fail or not depending on the model's logits.
A +inf logit is chosen the same way (the first one), a NaN is never chosen, and logits with
no finite value raise FloatingPointError.

How: in NumPy on the CPU (the logits come over once where the model runs elsewhere), and after
top-k on the k candidates only, as llama.cpp's samplers shrink their candidate list. Why: a
decode step streams the whole model through the caches, and each operation after it runs cold.
With PyTorch, every filter a pass over the 49k-token vocabulary, the built-in defaults cost
3.4 ms a token after SmolLM2's 6 ms step; this way 0.45 ms (`chatterm bench --sections sampling`,
BENCHMARKS.md). Top-k divides
only its k + 1 candidates by the temperature (the division keeps the order), and the whole
vocabulary only where the k-th then ties with the next. One difference: a temperature counts
as too small where a kept logit overflows, not any.

Ids at or beyond the tokenizer's vocabulary (padding rows of the embedding) are never sampled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .settings import SamplingSettings

_TINY = float(np.finfo(np.float32).tiny)


@dataclass
class SampleResult:
    token_id: int
    prob: float  # probability of the chosen token under the filtered distribution
    candidates: list[tuple[int, float]]  # most likely (id, prob) after filtering, best first


def new_rng(seed: int) -> np.random.Generator:
    """The random generator `sample` draws from, seeded (PCG64: the same draws on every machine)."""
    return np.random.default_rng(seed)


def apply_repetition_penalty(logits: np.ndarray, recent_ids: Sequence[int], penalty: float) -> np.ndarray:
    """logits (V,) float32, recent ids -> penalized copy. Duplicates are penalized once."""
    if penalty == 1.0 or len(recent_ids) == 0:
        return logits
    ids = np.asarray(recent_ids, dtype=np.int64)  # a repeat gathers and writes the same value: once
    out = logits.copy()
    scores = out[ids]
    out[ids] = np.where(scores < 0, scores * np.float32(penalty), scores / np.float32(penalty))
    return out


def top_k_candidates(logits: np.ndarray, k: int, temperature: float = 1.0) -> tuple[np.ndarray | None, np.ndarray]:
    """(ids, logits / temperature) of the k largest, ties at the k-th kept, best first; (None,
    every logit / temperature) where k is off (0, or the whole vocabulary). Where the logits hold
    a NaN, so do the values returned (for the caller to clean them). FloatingPointError where the
    division overflows."""
    n = logits.shape[-1]
    t = np.float32(temperature)
    with np.errstate(over="raise"):
        if k <= 0 or k >= n:
            return None, logits / t if temperature != 1.0 else logits
        pool = _pool(logits, k + 1)  # the k + 1 largest are among these
        part = pool[np.argpartition(logits[pool], pool.size - k - 1)[pool.size - k - 1:]]  # does the k-th tie the next?
        ids = part[np.argsort(-logits[part], kind="stable")]
        values = logits[ids] / t if temperature != 1.0 else logits[ids]
        if np.isnan(values[k]):  # NaN counts as the largest and sorts last: the caller sees it
            return ids, values
        if values[k] < values[k - 1]:  # everything past the k + 1 is <= values[k]: out
            return ids[:k], values[:k]
        scaled = logits / t if temperature != 1.0 else logits  # ties at the boundary (rare)
        ids = np.flatnonzero(scaled >= values[k - 1])
        ids = ids[np.argsort(-scaled[ids], kind="stable")]
        return ids, scaled[ids]


_STRIDE = 64  # _pool's sample: every 64th logit


def _pool(logits: np.ndarray, m: int) -> np.ndarray:
    """Ids that hold the m largest logits: those at or above a threshold taken from every 64th
    logit (its ~8m / 64-th largest: ~8m ids pass), else, where fewer than m pass (a NaN, an odd
    vocabulary), every id. Why: a partition of the whole vocabulary carries an index for each of
    its logits (0.45 ms for Gemma 3's 262k); the sample, a comparison and the ids that pass, 0.08."""
    sample = logits[::_STRIDE]
    j = -(-8 * m // _STRIDE)
    if j < sample.size:
        pool = np.flatnonzero(logits >= np.partition(sample, sample.size - j)[sample.size - j])
        if pool.size >= m:
            return pool
    return np.arange(logits.shape[-1])


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    ids, values = top_k_candidates(logits, k)
    return logits if ids is None else _spread(ids, values, logits.shape[-1])


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    if p >= 1.0:
        return logits
    order = np.argsort(logits, kind="stable")  # ascending
    cumulative = np.cumsum(_softmax(logits[order]))
    remove_sorted = cumulative <= np.float32(1 - p)
    remove_sorted[-1] = False  # always keep the most likely token
    remove = np.empty_like(remove_sorted)
    remove[order] = remove_sorted
    return np.where(remove, np.float32(-np.inf), logits)


def min_p_filter(logits: np.ndarray, min_p: float) -> np.ndarray:
    if min_p <= 0.0:
        return logits
    probs = _softmax(logits)
    return np.where(probs < np.float32(min_p) * probs.max(), np.float32(-np.inf), logits)


def filtered_logits(logits: np.ndarray, recent_ids: Sequence[int], s: SamplingSettings) -> np.ndarray:
    """All filters but the draw, on one step's logits (V,) float32: -inf where a token is out."""
    ids, scores, _ = _filter(np.asarray(logits, dtype=np.float32), recent_ids, s)
    return scores if ids is None else _spread(ids, scores, logits.shape[-1])


def sample(
    logits: torch.Tensor,
    recent_ids: Sequence[int],
    settings: SamplingSettings,
    rng: np.random.Generator | None,
    *,
    vocab_limit: int | None = None,
    n_candidates: int = 0,
) -> SampleResult:
    """Choose the next token from one step's logits (V,), drawing from `rng` (new_rng; None:
    unseeded) unless the step is greedy."""
    if logits.device.type != "cpu" or logits.dtype != torch.float32:
        logits = logits.detach().to("cpu", torch.float32)
    values = logits.numpy()
    if vocab_limit is not None and vocab_limit < values.shape[-1]:
        values = values[:vocab_limit]  # padded rows of the embedding are not tokens
    ids, scores, greedy = _filter(values, recent_ids, settings)
    if greedy:
        pick, probs = int(scores.argmax()), None
        if not math.isfinite(scores[pick]):  # argmax takes a NaN, or the first +inf: say what is broken
            scores = _finite_or_raise(scores)  # or take the largest finite logit
            pick = int(scores.argmax())
    else:
        probs = _softmax(scores)
        pick = _draw(probs, rng if rng is not None else np.random.default_rng())
    token = pick if ids is None else int(ids[pick])
    if n_candidates <= 0:
        return SampleResult(token, float("nan"), [])
    if probs is None:  # greedy: show the model's (penalized) distribution, the argmax chosen
        probs = _softmax(scores)
    best = _largest(probs, n_candidates)
    named = best if ids is None else ids[best]
    candidates = [(int(i), float(p)) for i, p in zip(named.tolist(), probs[best].tolist()) if p > 0]
    return SampleResult(token, float(probs[pick]), candidates)


def _filter(logits: np.ndarray, recent_ids: Sequence[int],
            s: SamplingSettings) -> tuple[np.ndarray | None, np.ndarray, bool]:
    """(the ids still in the running, None for all of them; their filtered logits; whether the
    step is greedy: then the logits are the penalized vocabulary's, for an argmax)."""
    logits = apply_repetition_penalty(logits, recent_ids, s.repetition_penalty)
    if s.temperature < _TINY:  # 0, or one that float32 holds as 0 or a subnormal: dividing
        return None, logits, True  # near-zero logits by it gives 0/0 = NaN
    try:
        ids, scaled = top_k_candidates(logits, s.top_k, s.temperature)
    except FloatingPointError:  # a temperature so small that a kept logit overflows: greedy
        return None, logits, True
    if not -np.inf < scaled.max() < np.inf:  # a NaN (max carries it, top-k keeps NaNs), a +inf, or all -inf
        logits = _finite_or_raise(logits)
        if logits.max() == np.inf:  # the most likely of all: the argmax takes the first
            return None, logits, True
        return _filter(logits, (), s)  # penalized already
    return ids, min_p_filter(top_p_filter(scaled, s.top_p), s.min_p), False


def _finite_or_raise(logits: np.ndarray) -> np.ndarray:
    """`logits` with NaN as -inf (a NaN is never chosen); FloatingPointError where none is finite."""
    if np.isfinite(logits).all():
        return logits
    if not np.isfinite(logits).any():
        raise FloatingPointError("the model produced no finite logits (NaN or inf); the weights may be broken")
    return np.where(np.isnan(logits), np.float32(-np.inf), logits)


def _largest(values: np.ndarray, n: int) -> np.ndarray:
    """The indexes of the n largest values, largest first (a partition, then a sort of n: the
    inspector's candidates from a 262k vocabulary without sorting it)."""
    if n < values.shape[-1]:
        top = np.argpartition(values, values.shape[-1] - n)[values.shape[-1] - n:]
        return top[np.argsort(-values[top], kind="stable")]
    return np.argsort(-values, kind="stable")


def _softmax(logits: np.ndarray) -> np.ndarray:
    top = logits.max()
    e = np.exp(logits - top) if top < np.inf else (logits == top).astype(logits.dtype)  # +inf: all the mass
    return e / e.sum()


def _draw(probs: np.ndarray, rng: np.random.Generator) -> int:
    """An index drawn with probability probs[i] (inverse transform: one uniform number). A
    token of probability 0 has an empty interval: never drawn."""
    cumulative = np.cumsum(probs)
    pick = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    return pick if pick < len(probs) else int(np.flatnonzero(probs)[-1])  # u * total rounded up to the total


def _spread(ids: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """A vocabulary-sized vector: `values` at `ids`, -inf elsewhere."""
    out = np.full(n, -np.inf, dtype=values.dtype)
    out[ids] = values
    return out
