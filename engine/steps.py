"""Token-level generation: prefill what the cache lacks, then one sampled token per step.

    stream = generate_tokens(model, prompt_ids, sampler, cache=cache)
    for step in stream:            # Step(token, logits): the token and the logits it was sampled from
        if step.token in eos or len(out) == n: break
    stream.prefilled, stream.prefill_s, stream.cancelled

After the loop the cache holds the prompt and every yielded token but the last (that one was never fed
back), as mlx-lm's `generate_step` leaves it. Text (detokenizing, stop strings, reasoning) is layered on
top in engine/generate.py; tests and benchmarks that want tokens use this directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.errors import ContextLengthError, EngineError, PassCancelled

Progress = Callable[[int, int], None]  # (prompt tokens computed so far, tokens to compute)


@dataclass
class Step:
    token: int
    logits: np.ndarray  # float32 [vocab]: what `token` was sampled from


def greedy(logits: np.ndarray) -> int:
    return int(np.argmax(logits))


class TokenStream:
    """An iterable of Steps with what the prefill did: see the module docstring."""

    def __init__(
        self,
        model: Any,
        prompt_ids: Sequence[int],
        sampler: Callable[[np.ndarray], int] = greedy,
        cache: Any = None,
        last_logits: np.ndarray | None = None,
        cancel: Callable[[], bool] | None = None,
        on_prefill: Progress | None = None,
    ) -> None:
        self.model, self.prompt_ids, self.sampler = model, list(prompt_ids), sampler
        self.cache = model.make_cache() if cache is None else cache
        self.last_logits = last_logits
        self.cancel = cancel or (lambda: False)
        self.on_prefill = on_prefill
        self.prefilled = 0  # prompt tokens computed (not restored)
        self.prefill_s = 0.0
        self.cancelled = False

    def prefill(self) -> np.ndarray | None:
        """Logits after the whole prompt (None if cancelled first); the cache then holds the prompt."""
        t0 = time.perf_counter()
        cache, n = self.cache, len(self.prompt_ids)
        if cache.offset == n and self.last_logits is not None:
            return np.asarray(self.last_logits, dtype=np.float32)
        if cache.offset == n:  # no logits stored for the last position: recompute it
            cache.trim(n - 1)
        start = cache.offset
        try:
            if self.cancel():
                raise PassCancelled("cancelled before the prefill")
            rest = self.prompt_ids[start:]
            logits = self.model.forward(rest, cache, cancel=self.cancel, progress=self.on_prefill)
        except PassCancelled:  # between two layers; the cache holds the chunks before that one
            self.cancelled = True
            logits = None
        self.prefilled = cache.offset - start if logits is None else n - start
        self.prefill_s = time.perf_counter() - t0
        return logits

    def __iter__(self) -> Iterator[Step]:
        logits = self.prefill()
        if logits is None:
            return
        yield from decode_from(self.model, self.cache, logits, self.sampler, self.cancel)
        self.cancelled = self.cancel()  # reached only when decode_from stopped (a cancel), not on a break


def decode_from(
    model: Any,
    cache: Any,
    logits: np.ndarray,
    sampler: Callable[[np.ndarray], int] = greedy,
    cancel: Callable[[], bool] | None = None,
) -> Iterator[Step]:
    """Steps from a cache that already holds the prompt and the logits of its last position (a
    restored or hand-filled cache); stops when `cancel` says so. Each yielded token is fed to the
    cache only when the next step is asked for."""
    cancelled = cancel or (lambda: False)
    while not cancelled():
        token = sampler(logits)
        yield Step(token, logits)
        if cancelled():
            return
        logits = model.forward([token], cache)


def generate_tokens(
    model: Any,
    prompt_ids: Sequence[int],
    sampler: Callable[[np.ndarray], int] = greedy,
    cache: Any = None,
    last_logits: np.ndarray | None = None,
    cancel: Callable[[], bool] | None = None,
    on_prefill: Progress | None = None,
) -> TokenStream:
    """Steps after `prompt_ids` (see the module docstring); `cache` may already hold a prefix of them
    (restored KV blocks: only the rest is prefilled; if it holds all of them, `last_logits` is used or
    the last position recomputed). `on_prefill(done, total)` reports prefill progress layer by layer."""
    check_prompt(model, prompt_ids, cache)
    return TokenStream(model, prompt_ids, sampler, cache, last_logits, cancel, on_prefill)


def check_prompt(model: Any, prompt_ids: Sequence[int], cache: Any, max_tokens: int = 0) -> None:
    """EngineError naming what is wrong with a prompt (empty, out of vocabulary, too long for the context)."""
    if len(prompt_ids) == 0:
        raise EngineError("cannot generate from an empty prompt: give at least one token")
    limit = int(model.config.max_position_embeddings)
    needed = len(prompt_ids) + max_tokens
    if needed > limit:
        room = limit - len(prompt_ids)
        advice = f"lower max_tokens to at most {room}" if room > 0 else "shorten the prompt"
        raise ContextLengthError(
            f"prompt of {len(prompt_ids)} tokens + max_tokens {max_tokens} = {needed} tokens exceeds "
            f"the model's context of {limit} tokens (max_position_embeddings); {advice}"
        )
    ids = np.asarray(prompt_ids, dtype=np.int64)
    vocab = int(model.config.vocab_size)
    bad = np.flatnonzero((ids < 0) | (ids >= vocab))
    if bad.size:
        first = int(bad[0])
        raise EngineError(
            f"prompt token {int(ids[first])} at position {first} is outside the vocabulary (size {vocab})"
        )
    if cache is not None and cache.offset > len(prompt_ids):
        raise EngineError(
            f"the cache holds {cache.offset} positions but the prompt has only {len(prompt_ids)} tokens; "
            "a restored cache must hold a prefix of the prompt"
        )
