"""Sampling filters against Hugging Face's formulas, on many random logit vectors."""

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings as hsettings, strategies as st

from chatterm.engine.sampling import (
    apply_repetition_penalty,
    filtered_logits,
    min_p_filter,
    new_rng,
    sample,
    top_k_filter,
    top_p_filter,
)
from chatterm.engine.settings import SamplingSettings


def ref_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Written from the definition: keep the most likely tokens until their mass reaches p,
    including the token that crosses it. p >= 1 keeps the whole distribution: a float32 sum can
    reach exactly 1.0 before the last tiny probabilities are added, and those tokens are still
    part of it."""
    if p >= 1.0:
        return logits.clone()
    probs = logits.double().softmax(-1).tolist()  # float32's top probability can round to 1.0
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    keep, mass = set(), 0.0
    for i in order:
        keep.add(i)
        mass += probs[i]
        if mass >= p:
            break
    out = logits.clone()
    for i in range(len(out)):
        if i not in keep:
            out[i] = float("-inf")
    return out


def random_logits(seed: int, n: int = 200) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g) * (1 + seed % 5)


EMPTY: list[int] = []


def filtered(logits: torch.Tensor, ids, s: SamplingSettings) -> torch.Tensor:
    """filtered_logits on a tensor's values, back as a tensor (the filters work in NumPy)."""
    return torch.from_numpy(filtered_logits(logits.numpy(), list(map(int, ids)), s))


@pytest.mark.parametrize("seed", range(40))
def test_filters_match_transformers_processors(seed):
    pytest.importorskip("transformers")
    from transformers.generation import logits_process as lp

    logits = random_logits(seed)
    ids = torch.randint(0, 200, (30,), generator=torch.Generator().manual_seed(seed))
    penalty, temp, k, p, m = 1.3, 0.7, 50, 0.9, 0.05
    theirs = logits[None].clone()
    theirs = lp.RepetitionPenaltyLogitsProcessor(penalty)(ids[None], theirs)
    theirs = lp.TemperatureLogitsWarper(temp)(ids[None], theirs)
    theirs = lp.TopKLogitsWarper(k)(ids[None], theirs)
    theirs = lp.TopPLogitsWarper(p)(ids[None], theirs)
    theirs = lp.MinPLogitsWarper(m)(ids[None], theirs)
    s = SamplingSettings(temperature=temp, top_k=k, top_p=p, min_p=m, repetition_penalty=penalty)
    ours = filtered(logits, ids, s)
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs[0]))
    finite = torch.isfinite(ours)
    assert torch.allclose(ours[finite], theirs[0][finite], atol=1e-6)


@pytest.mark.parametrize("seed", range(40))
def test_top_p_keeps_the_crossing_token(seed):
    logits = random_logits(seed)
    p = [0.1, 0.5, 0.9, 0.99][seed % 4]
    ours = torch.from_numpy(top_p_filter(logits.numpy(), p))
    assert torch.equal(torch.isinf(ours), torch.isinf(ref_top_p(logits, p)))


def test_repetition_penalty_formula_and_duplicates():
    logits = np.array([2.0, -2.0, 1.0, 0.5], dtype=np.float32)
    out = apply_repetition_penalty(logits, [0, 1, 0, 0], 2.0)
    assert out.tolist() == [1.0, -4.0, 1.0, 0.5]  # id 0 penalized once, negative multiplied
    assert logits.tolist() == [2.0, -2.0, 1.0, 0.5]  # a copy: the model's logits stay as they were


def test_top_k_keeps_ties_and_min_p_is_relative():
    logits = np.array([3.0, 2.0, 2.0, 1.0, 0.0], dtype=np.float32)
    assert np.isfinite(top_k_filter(logits, 2)).tolist() == [True, True, True, False, False]
    probs = np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32)
    kept = np.isfinite(min_p_filter(np.log(probs), 0.2)).tolist()
    assert kept == [True, True, True, False]  # 0.05 < 0.2 * 0.5


def test_temperature_zero_is_argmax_for_every_seed():
    logits = random_logits(3, 1000)
    s = SamplingSettings(temperature=0, repetition_penalty=1.0)
    picks = {sample(logits, EMPTY, s, new_rng(i)).token_id for i in range(20)}
    assert picks == {int(logits.argmax())}


@pytest.mark.parametrize("temperature", [1e-39, 1e-45, 1e-46, 5e-324])
def test_temperatures_too_small_to_divide_by_are_greedy(temperature):
    logits = torch.tensor([1.0, 30.0, 29.0, -5.0])
    s = SamplingSettings(temperature=temperature)
    for seed in range(5):
        result = sample(logits, EMPTY, s, new_rng(seed), n_candidates=3)
        assert result.token_id == 1 and result.prob == result.prob  # not NaN
    assert torch.isfinite(filtered(logits, EMPTY, s)).all()
    # Logits near zero: float32 holds 1e-46 as 0, and 0 / 0 was NaN.
    quiet = torch.tensor([0.0, 1e-30, 0.0])
    result = sample(quiet, EMPTY, s, new_rng(0), n_candidates=3)
    assert result.token_id == 1 and result.prob == result.prob


def test_a_small_temperature_that_does_not_overflow_still_samples():
    logits = torch.tensor([0.0, 1e-4])  # nearly tied: at T = 1e-4 still about 27% / 73%
    s = SamplingSettings(temperature=1e-4)
    picks = {sample(logits, EMPTY, s, new_rng(i)).token_id
             for i in range(40)}
    assert picks == {0, 1}


def test_filters_off_leave_the_distribution_alone():
    """Every filter off (temperature 1, top-k 0, top-p 1, min-p 0): the filtered logits are the model's own."""
    logits = random_logits(7)
    ids = torch.arange(0, 200, 3)
    neutral = SamplingSettings(temperature=1, top_k=0, top_p=1, min_p=0)
    assert torch.equal(filtered(logits, ids, neutral), logits)


def test_the_built_in_defaults_are_llama_cpps_filters():
    """temperature 0.8, then top-k 40, top-p 0.95, min-p 0.05: at most 40 of 200 tokens survive."""
    logits = random_logits(7)
    kept = torch.isfinite(filtered(logits, EMPTY, SamplingSettings()))
    assert 1 <= int(kept.sum()) <= 40


def test_padded_vocab_ids_are_never_sampled():
    logits = torch.zeros(64)
    logits[50:] = 100.0  # padding rows that a broken model made attractive
    s = SamplingSettings(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0)
    g = new_rng(0)
    assert all(sample(logits, EMPTY, s, g, vocab_limit=50).token_id < 50 for _ in range(200))


def test_seeded_sampling_is_reproducible():
    logits = random_logits(5, 500)
    s = SamplingSettings(temperature=1.0)
    a = [sample(logits, EMPTY, s, new_rng(42)).token_id for _ in range(5)]
    b = [sample(logits, EMPTY, s, new_rng(42)).token_id for _ in range(5)]
    assert a == b


def test_nan_logits_raise_a_clear_error():
    with pytest.raises(FloatingPointError, match="NaN"):
        sample(torch.full((10,), float("nan")), EMPTY, SamplingSettings(), None)


@pytest.mark.parametrize("values, expected", [
    ([1.0, float("nan"), 3.0, 2.0], 2),  # a NaN is never chosen: the largest finite logit is
    ([1.0, float("inf"), 3.0, float("inf")], 1),  # +inf is the largest: its first index
    ([float("-inf"), -5.0, float("-inf")], 1),
])
def test_greedy_picks_as_the_filtered_argmax_with_nan_and_inf(values, expected):
    """Plain greedy has a fast path (one argmax); it must choose as the full path does."""
    logits = torch.tensor(values)
    fast = sample(logits, EMPTY, SamplingSettings(temperature=0, repetition_penalty=1.0), None)
    full = sample(logits, EMPTY, SamplingSettings(temperature=0, repetition_penalty=1.0), None, n_candidates=1)
    assert fast.token_id == full.token_id == expected


def test_greedy_with_no_finite_logit_raises_a_clear_error():
    with pytest.raises(FloatingPointError, match="no finite logits"):
        sample(torch.full((5,), float("-inf")), EMPTY,
               SamplingSettings(temperature=0, repetition_penalty=1.0), None)


logit_vectors = st.lists(st.floats(-30, 30, allow_nan=False), min_size=2, max_size=60)


# derandomize: the same draws on every run, so the suite is deterministic.
@hsettings(max_examples=150, deadline=None, derandomize=True)
@given(values=logit_vectors, k=st.integers(0, 70), p=st.floats(0.01, 1.0), m=st.floats(0.0, 1.0),
       temp=st.floats(0.05, 3.0))
# This draw failed before the reference kept everything at p = 1: the top token's float32
# probability is exactly 1.0 (the other is about 1e-8), so "until the mass reaches p" stopped early.
@example(values=[0.0, 1.0], k=0, p=1.0, m=0.0, temp=0.0546875)
# And here just below 1: the top token's float32 probability rounds to 1.0 >= p, the other's is 4e-8.
@example(values=[12.0, -5.0], k=0, p=0.9999999999999999, m=0.0, temp=1.0)
def test_filtered_distribution_is_a_distribution_inside_top_k_and_top_p(values, k, p, m, temp):
    logits = torch.tensor(values)
    values = logits.tolist()  # as float32 holds them: 1e-96 is 0.0, and ties with it
    s = SamplingSettings(temperature=temp, top_k=k, top_p=p, min_p=m, repetition_penalty=1.0)
    probs = filtered(logits, EMPTY, s).softmax(-1)
    assert abs(float(probs.sum()) - 1.0) < 1e-4
    support = set(torch.nonzero(probs > 0).flatten().tolist())
    assert support, "at least one token always survives"
    if k > 0:
        kth = sorted(values, reverse=True)[min(k, len(values)) - 1]
        assert all(values[i] >= kth for i in support)
    scaled = logits / temp
    if 0 < k < len(values):
        scaled = torch.from_numpy(top_k_filter(scaled.numpy(), k))
    # Inside the top-p set; among tokens of equal probability either may be the one kept.
    scaled_probs = scaled.softmax(-1)
    top_p_set = torch.isfinite(ref_top_p(scaled, p))
    floor = float(scaled_probs[top_p_set].min())
    assert all(float(scaled_probs[i]) >= floor * (1 - 1e-5) for i in support)


def test_draws_follow_the_filtered_distribution():
    """The draw (one uniform number against the cumulative probabilities) picks each kept token
    as often as its probability says, and never one that a filter removed."""
    logits = random_logits(11, 1000)
    s = SamplingSettings(temperature=0.9, top_k=20, top_p=0.9, min_p=0.02)
    probs = filtered(logits, EMPTY, s).softmax(-1)
    rng, n = new_rng(0), 20000
    counts = torch.zeros_like(probs)
    for _ in range(n):
        counts[sample(logits, EMPTY, s, rng).token_id] += 1
    assert counts[probs == 0].sum() == 0
    assert torch.allclose(counts / n, probs, atol=0.015)
    assert int((probs > 0).sum()) >= 3  # a distribution, not one token


def test_top_k_keeps_a_tie_that_only_the_temperature_makes():
    """HF divides by the temperature before top-k; here only the candidates are divided, and two
    neighbouring floats that divide to the same value must still both be kept."""
    a = np.float32(1.0)
    while a / np.float32(3.0) != np.nextafter(a, np.float32(-np.inf)) / np.float32(3.0):
        a = np.nextafter(a, np.float32(-np.inf))
    b = np.nextafter(a, np.float32(-np.inf))
    for logits in ([a, b, 0.0], [0.0, b, a]):
        values = np.array(logits, dtype=np.float32)
        kept = np.isfinite(filtered_logits(values, EMPTY, SamplingSettings(temperature=3.0, top_k=1, top_p=1, min_p=0)))
        assert kept.tolist() == np.isfinite(top_k_filter(values / np.float32(3.0), 1)).tolist()
        assert kept.sum() == 2


def test_a_penalized_token_can_leave_the_top_k():
    """The penalty comes before top-k (HF's order): a repeated favourite makes room for the next."""
    logits = np.array([5.0, 4.9, 1.0, 0.0], dtype=np.float32)
    s = SamplingSettings(temperature=1.0, top_k=1, top_p=1, min_p=0, repetition_penalty=2.0)
    assert np.isfinite(filtered_logits(logits, [0], s)).tolist() == [False, True, False, False]
    assert sample(torch.from_numpy(logits), [0], s, new_rng(0)).token_id == 1


@pytest.mark.parametrize("nans", [1, 2, 5, 200])
def test_nan_logits_are_never_sampled_or_all_nan_raise(nans):
    logits = random_logits(4)
    logits[torch.randperm(200, generator=torch.Generator().manual_seed(nans))[:nans]] = float("nan")
    s = SamplingSettings(top_k=5, top_p=1, min_p=0)
    if nans == 200:
        with pytest.raises(FloatingPointError, match="no finite logits"):
            sample(logits, EMPTY, s, new_rng(0))
        return
    finite = torch.nan_to_num(logits, nan=float("-inf"))
    top = set(torch.topk(finite, 5).indices.tolist())
    assert {sample(logits, EMPTY, s, new_rng(i)).token_id for i in range(60)} <= top


@pytest.mark.parametrize("s", [SamplingSettings(temperature=0), SamplingSettings(temperature=0.7, top_k=20)],
                         ids=["greedy", "sampled"])
def test_the_inspectors_candidates_are_the_most_likely_best_first(s):
    logits = random_logits(9, 1000)
    result = sample(logits, EMPTY, s, new_rng(0), n_candidates=5)
    probs = filtered(logits, EMPTY, s).double().softmax(-1)
    top = torch.topk(probs, 5)
    assert [i for i, _ in result.candidates] == top.indices.tolist()
    assert [p for _, p in result.candidates] == pytest.approx(top.values.tolist(), rel=1e-5)
    assert result.prob == pytest.approx(float(probs[result.token_id]), rel=1e-5)


def _large_vocabularies():
    rng = np.random.default_rng(5)
    normal = (rng.standard_normal(100_000) * 3).astype(np.float32)
    few = np.full(100_000, -1000.0, dtype=np.float32)
    few[::64][:10] = np.arange(10, 0, -1)  # only a few sampled logits are large: too few pass
    tied = normal.copy()
    tied[np.argsort(normal)[-45:]] = 7.0  # 45 ties at the top, k = 40
    lows = np.sort(normal)[:8]
    return {"normal": normal, "too few pass": few, "tied": tied, "flat": np.zeros(100_000, dtype=np.float32),
            "negative": -np.abs(normal) - 1e4 + np.isin(normal, lows)}


@pytest.mark.parametrize("name", ["normal", "too few pass", "tied", "flat", "negative"])
@pytest.mark.parametrize("k", [1, 40, 500])
def test_top_k_of_a_large_vocabulary_is_the_sort_s(name, k):
    """Top-k over a real-size vocabulary looks first among the logits above a threshold sampled
    from every 64th: the same ids as sorting the whole vocabulary, whatever the logits."""
    from chatterm.engine.sampling import top_k_candidates

    logits = _large_vocabularies()[name]
    kth = np.sort(logits)[-k]
    ids, values = top_k_candidates(logits, k)
    assert set(ids.tolist()) == set(np.flatnonzero(logits >= kth).tolist())
    assert values.tolist() == logits[ids].tolist() and (np.diff(values) <= 0).all()  # best first
