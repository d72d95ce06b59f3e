"""Samplers: the masks equal transformers' logits processors; a seed makes sampling reproducible."""

from __future__ import annotations

import numpy as np
import pytest

from engine.sampling import (
    SamplingParams,
    apply_min_p,
    apply_repetition_penalty,
    apply_top_k,
    apply_top_p,
    make_sampler,
)

VOCAB = 1000


def _logits(seed: int, scale: float = 3.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(VOCAB) * scale).astype(np.float32)


def _hf(processor, logits: np.ndarray, input_ids: list[int] | None = None) -> np.ndarray:
    torch = pytest.importorskip("torch")
    ids = torch.tensor([input_ids or [0]])
    return processor(ids, torch.tensor(logits)[None].clone())[0].numpy()


def test_greedy_is_argmax():
    logits = _logits(0)
    sampler = make_sampler(SamplingParams(temperature=0.0))
    assert sampler(logits) == int(np.argmax(logits))


@pytest.mark.parametrize("k", [1, 5, 50, 999])
def test_top_k_mask_equals_transformers(k):
    from transformers.generation.logits_process import TopKLogitsWarper

    logits = _logits(k)
    ours = np.isfinite(apply_top_k(logits, k))
    assert ours.sum() == k
    assert np.array_equal(ours, np.isfinite(_hf(TopKLogitsWarper(top_k=k), logits)))
    assert np.array_equal(np.sort(np.flatnonzero(ours)), np.sort(np.argsort(-logits)[:k]))


@pytest.mark.parametrize("p", [0.05, 0.3, 0.8, 0.95])
@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_top_p_mask_equals_transformers(p, scale):
    from transformers.generation.logits_process import TopPLogitsWarper

    logits = _logits(int(p * 100) + int(scale), scale)
    ours = np.isfinite(apply_top_p(logits, p))
    assert np.array_equal(ours, np.isfinite(_hf(TopPLogitsWarper(top_p=p), logits)))


@pytest.mark.parametrize("scale", [0.3, 2.0, 6.0], ids=["flat", "medium", "peaked"])
def test_top_p_on_a_large_vocabulary_equals_transformers(scale):
    """Large vocabularies take the partial-sort paths (best 1024 / 16384 first): same mask as a full sort."""
    from transformers.generation.logits_process import TopPLogitsWarper

    logits = (np.random.default_rng(42).standard_normal(50_000) * scale).astype(np.float32)
    ours = np.isfinite(apply_top_p(logits, 0.9))
    assert np.array_equal(ours, np.isfinite(_hf(TopPLogitsWarper(top_p=0.9), logits)))


def test_top_p_with_all_tokens_tied_keeps_the_same_count_as_transformers():
    from transformers.generation.logits_process import TopPLogitsWarper

    logits = np.zeros(50_000, dtype=np.float32)
    ours = np.isfinite(apply_top_p(logits, 0.5)).sum()
    assert ours == np.isfinite(_hf(TopPLogitsWarper(top_p=0.5), logits)).sum()
    assert abs(ours - 25_000) <= 1


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = np.array([0.5, 0.2, 0.15, 0.1, 0.05])
    logits = np.log(probs).astype(np.float32)
    assert np.flatnonzero(np.isfinite(apply_top_p(logits, 0.6))).tolist() == [0, 1]
    assert np.flatnonzero(np.isfinite(apply_top_p(logits, 0.8))).tolist() == [0, 1, 2]
    assert np.flatnonzero(np.isfinite(apply_top_p(logits, 0.01))).tolist() == [0]


@pytest.mark.parametrize("min_p", [0.01, 0.1, 0.5])
def test_min_p_mask_equals_transformers(min_p):
    from transformers.generation.logits_process import MinPLogitsWarper

    logits = _logits(7)
    ours = np.isfinite(apply_min_p(logits, min_p))
    assert np.array_equal(ours, np.isfinite(_hf(MinPLogitsWarper(min_p=min_p), logits)))
    probs = np.exp(logits - logits.max())
    assert np.array_equal(ours, probs >= min_p * probs.max())


def test_repetition_penalty_equals_transformers():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    logits = _logits(3)
    seen = [5, 17, 17, 400, 999, int(np.argmax(logits))]
    ours = apply_repetition_penalty(logits, np.unique(seen), 1.3)
    np.testing.assert_allclose(
        ours, _hf(RepetitionPenaltyLogitsProcessor(penalty=1.3), logits, seen), rtol=1e-6
    )
    assert ours[seen[-1]] < logits[seen[-1]]  # the favourite token, once seen, is less likely


def test_repetition_penalty_steers_greedy_away_from_seen_tokens():
    logits = np.array([2.0, 1.9, -1.0], dtype=np.float32)
    fresh = make_sampler(SamplingParams(repetition_penalty=1.2))
    # 0 wins, then is penalized (2.0 -> 1.67 < 1.9) so 1 wins, then both are penalized (1.67 > 1.58).
    assert [fresh(logits) for _ in range(3)] == [0, 1, 0]
    # The prompt counts as seen, as in transformers.
    assert make_sampler(SamplingParams(repetition_penalty=1.2), context=[0])(logits) == 1


def test_the_combined_chain_equals_transformers():
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    params = SamplingParams(temperature=0.7, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=1.1, seed=1)
    context = [1, 2, 3, 500]
    chain = LogitsProcessorList(
        [
            RepetitionPenaltyLogitsProcessor(1.1),
            TemperatureLogitsWarper(0.7),
            TopKLogitsWarper(40),
            TopPLogitsWarper(0.9),
            MinPLogitsWarper(0.05),
        ]
    )
    logits = _logits(11)
    ours = make_sampler(params, context).process(logits)
    theirs = _hf(chain, logits, context)
    assert np.array_equal(np.isfinite(ours), np.isfinite(theirs))
    np.testing.assert_allclose(ours[np.isfinite(ours)], theirs[np.isfinite(theirs)], rtol=1e-5)


def test_seed_makes_sampling_deterministic():
    params = SamplingParams(temperature=1.0, top_p=0.95, seed=1234)
    logits = [_logits(i, 1.0) for i in range(64)]
    a, b = make_sampler(params), make_sampler(params)
    run_a, run_b = [a(x) for x in logits], [b(x) for x in logits]
    assert run_a == run_b
    other = make_sampler(SamplingParams(temperature=1.0, top_p=0.95, seed=4321))
    assert [other(x) for x in logits] != run_a


def test_sampling_follows_the_distribution():
    probs = np.array([0.6, 0.3, 0.1])
    logits = np.log(probs).astype(np.float32)
    sampler = make_sampler(SamplingParams(temperature=1.0, seed=0))
    counts = np.bincount([sampler(logits) for _ in range(6000)], minlength=3) / 6000
    np.testing.assert_allclose(counts, probs, atol=0.03)


def test_sampling_never_picks_a_masked_token():
    logits = _logits(5)
    sampler = make_sampler(SamplingParams(temperature=2.0, top_k=3, seed=9))
    allowed = set(np.argsort(-logits)[:3].tolist())
    assert {sampler(logits) for _ in range(300)} == allowed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"min_p": 1.0}, "min_p"),
        ({"top_k": -2}, "top_k"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": [""]}, "stop"),
    ],
)
def test_invalid_parameters_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)
