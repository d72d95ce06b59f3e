"""Choosing the next token from logits: greedy, temperature, top-k, top-p, min-p, repetition penalty.

The order and the semantics follow transformers' logits processors, so a seeded run is reproducible and
the masks are the ones users know: repetition penalty, then temperature, then top-k, top-p and min-p,
then a draw from the remaining distribution with a numpy Generator (deterministic for a seed).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

# top-p sorts only the best few tokens when they already hold top_p of the mass (the usual case for a
# language model); flatter distributions widen the candidate set, and only the flattest sort everything.
_TOP_P_CANDIDATES = (1024, 16384)


@dataclass
class SamplingParams:
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    max_tokens: int = 512
    stop: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        problems = []
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p < 1.0:
            problems.append(f"min_p must be in [0, 1), got {self.min_p}")
        if self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}")
        if self.max_tokens < 1:
            problems.append(f"max_tokens must be >= 1, got {self.max_tokens}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            problems.append(f"stop strings must be non-empty strings, got {self.stop!r}")
        if problems:
            raise ValueError("invalid sampling parameters: " + "; ".join(problems))


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """Make already-seen tokens less likely: positive logits divided by `penalty`, negative multiplied."""
    if penalty == 1.0 or seen.size == 0:
        return logits
    out = logits.copy()
    picked = out[seen]
    out[seen] = np.where(picked > 0, picked / penalty, picked * penalty)
    return out


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max()
    e = np.exp(z, dtype=np.float64)
    return e / e.sum()


def top_k_ids(logits: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k highest logits (and any tied with the k-th), in vocabulary order."""
    kth = np.partition(logits, logits.size - k)[logits.size - k]
    return np.flatnonzero(logits >= kth)


def _best_reaching(ids: np.ndarray, probs: np.ndarray, p: float) -> np.ndarray:
    """The best-first prefix of `ids` whose probabilities sum to at least p (at least one id)."""
    # quicksort: a stable sort of 150k floats is 10x slower, and ties are arbitrary in transformers too.
    order = ids[np.argsort(-probs[ids])]
    before = np.cumsum(probs[order]) - probs[order]
    # A token stays if the mass of the better tokens is still short of p.
    n_keep = int(np.searchsorted(before, p, side="left"))
    return order[: max(1, min(n_keep, order.size))]


def top_p_ids(logits: np.ndarray, p: float) -> np.ndarray:
    """Ids of the smallest set of best tokens whose probabilities sum to at least p."""
    probs = _softmax(logits)
    for n in _TOP_P_CANDIDATES:
        if n >= probs.size:
            break
        best = np.argpartition(probs, probs.size - n)[probs.size - n :]
        if probs[best].sum() >= p:
            return _best_reaching(best, probs, p)
    # A flat distribution (high temperature): sort everything.
    return _best_reaching(np.arange(probs.size), probs, p)


def min_p_ids(logits: np.ndarray, min_p: float) -> np.ndarray:
    """Ids whose probability is at least min_p times the best token's."""
    # p_i >= min_p * p_max  <=>  logit_i >= logit_max + log(min_p)
    return np.flatnonzero(logits >= logits.max() + np.log(min_p))


def _masked(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    out = np.full_like(logits, -np.inf)
    out[ids] = logits[ids]
    return out


def apply_top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the k highest logits (and any tied with the k-th); the rest become -inf."""
    return logits if k <= 0 or k >= logits.size else _masked(logits, top_k_ids(logits, k))


def apply_top_p(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep the smallest set of best tokens whose probabilities sum to at least p (always >= 1 token)."""
    return logits if p >= 1.0 else _masked(logits, top_p_ids(logits, p))


def apply_min_p(logits: np.ndarray, min_p: float) -> np.ndarray:
    """Drop tokens whose probability is below min_p times the best token's probability."""
    return logits if min_p <= 0.0 else _masked(logits, min_p_ids(logits, min_p))


class Sampler:
    """Picks tokens for one sequence; keeps the set of seen tokens for the repetition penalty.

    After the penalty and the temperature, each mask narrows a candidate set (ids, logits) instead of
    rewriting the whole vocabulary, so top-k 20 followed by top-p works on 20 numbers, not 150k.
    """

    def __init__(self, params: SamplingParams, context: Iterable[int] = ()) -> None:
        self.params = params
        self.rng = np.random.default_rng(params.seed)
        self._seen: set[int] = set()
        self._seen_array = np.empty(0, dtype=np.int64)
        if params.repetition_penalty != 1.0:
            self._seen.update(int(t) for t in context)
            self._seen_array = np.fromiter(self._seen, dtype=np.int64, count=len(self._seen))

    def observe(self, token_id: int) -> None:
        """Record a generated token (the repetition penalty covers prompt and reply, as transformers)."""
        if self.params.repetition_penalty != 1.0 and token_id not in self._seen:
            self._seen.add(token_id)
            self._seen_array = np.append(self._seen_array, token_id)

    def candidates(self, logits: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """(ids, logits) of the tokens still allowed after penalty, temperature, top-k, top-p, min-p;
        ids is None when every token is (logits then cover the whole vocabulary)."""
        p = self.params
        x = np.asarray(logits, dtype=np.float32)
        x = apply_repetition_penalty(x, self._seen_array, p.repetition_penalty)
        if p.temperature == 0.0:
            return None, x
        x = x / np.float32(p.temperature)
        ids: np.ndarray | None = None
        for active, select in (
            (0 < p.top_k < x.size, lambda v: top_k_ids(v, p.top_k)),
            (p.top_p < 1.0, lambda v: top_p_ids(v, p.top_p)),
            (p.min_p > 0.0, lambda v: min_p_ids(v, p.min_p)),
        ):
            if active:
                keep = select(x)
                ids = keep if ids is None else ids[keep]
                x = x[keep]
        return ids, x

    def process(self, logits: np.ndarray) -> np.ndarray:
        """The full-vocabulary logits after penalty, temperature and masks (-inf = excluded)."""
        ids, x = self.candidates(logits)
        if ids is None:
            return x
        out = np.full(np.shape(logits), -np.inf, dtype=np.float32)
        out[ids] = x
        return out

    def __call__(self, logits: np.ndarray) -> int:
        """The next token for `logits` (float32 [vocab]); records it for the repetition penalty."""
        ids, x = self.candidates(logits)
        if self.params.temperature == 0.0:
            choice = int(np.argmax(x))
        else:
            cumulative = np.cumsum(_softmax(x))
            choice = int(np.searchsorted(cumulative, self.rng.random() * cumulative[-1], side="right"))
            choice = min(choice, x.size - 1)
        token = choice if ids is None else int(ids[choice])
        self.observe(token)
        return token


def make_sampler(params: SamplingParams, context: Iterable[int] = ()) -> Sampler:
    """A sampler for one sequence; `context` (the prompt ids) seeds the repetition penalty."""
    return Sampler(params, context)
