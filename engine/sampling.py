"""Choosing the next token from logits: greedy, temperature, top-k, top-p, min-p, repetition penalty.

The order and the semantics follow transformers' logits processors, so a seeded run is reproducible and
the masks are the ones users know: repetition penalty, then temperature, then top-k, top-p and min-p,
then a draw from the remaining distribution with a numpy Generator (deterministic for a seed).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

# top-p first looks at this many best tokens; only if they hold less than top_p of the mass (a very
# flat distribution) does it sort the whole vocabulary.
_TOP_P_CANDIDATES = 1024


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


def apply_top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the k highest logits (and any tied with the k-th); the rest become -inf."""
    if k <= 0 or k >= logits.size:
        return logits
    kth = np.partition(logits, logits.size - k)[logits.size - k]
    return np.where(logits < kth, -np.inf, logits).astype(logits.dtype, copy=False)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max()
    e = np.exp(z, dtype=np.float64)
    return e / e.sum()


def apply_top_p(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep the smallest set of best tokens whose probabilities sum to at least p (always >= 1 token)."""
    if p >= 1.0:
        return logits
    probs = _softmax(logits)
    n = min(_TOP_P_CANDIDATES, probs.size)
    candidates = np.argpartition(probs, probs.size - n)[probs.size - n :]
    if probs[candidates].sum() < p:
        candidates = np.arange(probs.size)
    order = candidates[np.argsort(-probs[candidates], kind="stable")]
    cumulative = np.cumsum(probs[order])
    # A token stays if the mass of the tokens before it is still short of p.
    n_keep = int(np.searchsorted(cumulative - probs[order], p, side="left"))
    n_keep = max(1, min(n_keep, order.size))
    out = np.full_like(logits, -np.inf)
    keep = order[:n_keep]
    out[keep] = logits[keep]
    return out


def apply_min_p(logits: np.ndarray, min_p: float) -> np.ndarray:
    """Drop tokens whose probability is below min_p times the best token's probability."""
    if min_p <= 0.0:
        return logits
    # p_i >= min_p * p_max  <=>  logit_i >= logit_max + log(min_p)
    threshold = logits.max() + np.log(min_p)
    return np.where(logits < threshold, -np.inf, logits).astype(logits.dtype, copy=False)


class Sampler:
    """Picks tokens for one sequence; keeps the set of seen tokens for the repetition penalty."""

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

    def process(self, logits: np.ndarray) -> np.ndarray:
        """The logits after penalty, temperature and the top-k/top-p/min-p masks (-inf = excluded)."""
        p = self.params
        logits = np.asarray(logits, dtype=np.float32)
        logits = apply_repetition_penalty(logits, self._seen_array, p.repetition_penalty)
        if p.temperature == 0.0:
            return logits
        logits = logits / np.float32(p.temperature)
        logits = apply_top_k(logits, p.top_k)
        logits = apply_top_p(logits, p.top_p)
        return apply_min_p(logits, p.min_p)

    def __call__(self, logits: np.ndarray) -> int:
        """The next token for `logits` (float32 [vocab]); records it for the repetition penalty."""
        processed = self.process(logits)
        if self.params.temperature == 0.0:
            token = int(np.argmax(processed))
        else:
            probs = _softmax(processed)
            cumulative = np.cumsum(probs)
            u = self.rng.random() * cumulative[-1]
            token = int(np.searchsorted(cumulative, u, side="right"))
            token = min(token, probs.size - 1)
        self.observe(token)
        return token


def make_sampler(params: SamplingParams, context: Iterable[int] = ()) -> Sampler:
    """A sampler for one sequence; `context` (the prompt ids) seeds the repetition penalty."""
    return Sampler(params, context)
