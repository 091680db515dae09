"""Turn one step's logits into the next token.

The filters are applied in the order, and with the formulas, of Hugging Face transformers:
repetition penalty -> temperature -> top-k -> top-p -> min-p -> a draw from a seeded
`torch.Generator`.
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

Ids at or beyond the tokenizer's vocabulary (padding rows of the embedding) are never sampled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .settings import SamplingSettings


@dataclass
class SampleResult:
    token_id: int
    prob: float  # probability of the chosen token under the filtered distribution
    candidates: list[tuple[int, float]]  # most likely (id, prob) after filtering, best first


def apply_repetition_penalty(logits: torch.Tensor, recent_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """logits (V,), recent_ids (N,) -> penalized copy. Duplicates are penalized once."""
    if penalty == 1.0 or recent_ids.numel() == 0:
        return logits
    scores = logits.gather(0, recent_ids)
    scores = torch.where(scores < 0, scores * penalty, scores / penalty)
    return logits.scatter(0, recent_ids, scores)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0 or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k).values[..., -1, None]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= (1 - p)
    remove_sorted[..., -1:] = False  # always keep the most likely token
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    if min_p <= 0.0:
        return logits
    probs = logits.softmax(dim=-1)
    threshold = min_p * probs.amax(dim=-1, keepdim=True)
    return logits.masked_fill(probs < threshold, float("-inf"))


def is_greedy(logits: torch.Tensor, temperature: float) -> bool:
    """True for temperature 0, and for temperatures so small that logits / temperature overflows."""
    if temperature < torch.finfo(torch.float32).tiny:  # 0, or one that float32 holds as 0 or a
        return True  # subnormal: dividing near-zero logits by it gives 0/0 = NaN
    if temperature >= 1.0:  # no finite float32 logit can overflow
        return False
    finite = logits[torch.isfinite(logits)]
    largest = float(finite.abs().max()) if finite.numel() else 0.0
    return largest / temperature > torch.finfo(torch.float32).max


def filtered_logits(logits: torch.Tensor, recent_ids: torch.Tensor, s: SamplingSettings) -> torch.Tensor:
    """All filters but the draw, on one step's logits (V,) in float32."""
    return _filter(logits, recent_ids, s)[0]


def _filter(logits: torch.Tensor, recent_ids: torch.Tensor, s: SamplingSettings) -> tuple[torch.Tensor, bool]:
    """(filtered logits, whether the step is greedy)."""
    logits = apply_repetition_penalty(logits, recent_ids, s.repetition_penalty)
    if is_greedy(logits, s.temperature):
        return logits, True
    logits = logits / s.temperature
    logits = top_k_filter(logits, s.top_k)
    logits = top_p_filter(logits, s.top_p)
    return min_p_filter(logits, s.min_p), False


def sample(
    logits: torch.Tensor,
    recent_ids: torch.Tensor,
    settings: SamplingSettings,
    generator: torch.Generator | None,
    *,
    vocab_limit: int | None = None,
    n_candidates: int = 0,
) -> SampleResult:
    """Choose the next token from one step's logits (V,)."""
    logits = logits.float()
    if vocab_limit is not None and vocab_limit < logits.size(-1):
        logits = logits[:vocab_limit]  # padded rows of the embedding are not tokens
    if settings.temperature == 0 and settings.repetition_penalty == 1.0 and n_candidates <= 0:
        # Plain greedy: one pass over the vocabulary instead of five (a check, a cleaned copy, a
        # penalty, the argmax), in NumPy on the CPU: torch's argmax over a 49k vocabulary took
        # 70 us, NumPy's 4 (a small model's decode step is 6 ms). Both return a NaN's index when
        # there is one, and +inf is chosen too: any non-finite choice takes the full path below,
        # which says what is broken or picks the largest finite logit as before.
        if logits.device.type == "cpu":
            values = logits.numpy()
            token = int(values.argmax())
            finite = math.isfinite(values[token])
        else:
            token = int(torch.argmax(logits))
            finite = bool(torch.isfinite(logits[token]))
        if finite:
            return SampleResult(token, float("nan"), [])
    if not torch.isfinite(logits).any():
        raise FloatingPointError("the model produced no finite logits (NaN or inf); the weights may be broken")
    logits = torch.nan_to_num(logits, nan=float("-inf"))
    scores, greedy = _filter(logits, recent_ids, settings)
    if greedy:
        token = int(torch.argmax(scores))
        probs = None
    else:
        probs = scores.softmax(dim=-1)
        token = int(torch.multinomial(probs, 1, generator=generator))
    if n_candidates <= 0:
        return SampleResult(token, float("nan"), [])
    if probs is None:  # greedy: show the model's (penalized) distribution, the argmax chosen
        probs = scores.softmax(dim=-1)
    top = torch.topk(probs, min(n_candidates, probs.size(-1)))
    candidates = [(int(i), float(p)) for p, i in zip(top.values.tolist(), top.indices.tolist()) if p > 0]
    return SampleResult(token, float(probs[token]), candidates)
