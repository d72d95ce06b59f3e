"""engine.Model: a loaded network plus what callers need around it (config, tokenizer, fingerprint)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.cache import KVCache
from engine.errors import ContextLengthError, KVPagesLost, PassCancelled
from engine.kvpool import ArrayPool

if TYPE_CHECKING:
    from engine.models.base import BaseModelArgs, CausalLM
    from engine.tokenizer import Tokenizer

log = logging.getLogger(__name__)

# Tokens per prefill step. Bigger chunks make more efficient matmuls (1024 rows: ~30% less CPU than 512
# on OpenBLAS), and each chunk widens bf16 weights for BLAS once (numpy_bf16): 2048 rows prefilled
# 2048 tokens ~5% faster than 1024 in one step. The backends bound attention memory themselves, and a
# pass checks for cancellation between layers, so a chunk's size does not delay a cancel.
PREFILL_CHUNK = 2048


class Model:
    def __init__(
        self,
        *,
        name: str,
        path: Path,
        arch: str,
        ops: ModuleType,
        config: BaseModelArgs,
        network: CausalLM,
        fingerprint: str,
        precision: str = "fp32",
        kv_dtype: str | None = None,
    ) -> None:
        self.name = name
        self.path = path
        self.arch = arch
        self.ops = ops
        self.backend: str = ops.name
        self.config = config
        self.network = network
        self.kv_dtype: str = kv_dtype or ops.float_dtype  # the KV pages' dtype (engine.cache.KV_DTYPES)
        self.fingerprint = fingerprint
        self.precision = precision  # engine/precision.py
        self.prefill_chunk = PREFILL_CHUNK
        # numpy caches reuse the key/value arrays of caches that are gone (engine.kvpool); mlx keeps
        # a buffer cache of its own
        self.kv_pool = ArrayPool(ops.empty) if ops.name == "numpy" else None

    def __repr__(self) -> str:
        return f"Model({self.name!r}, arch={self.arch}, backend={self.backend})"

    @functools.cached_property
    def tokenizer(self) -> Tokenizer:
        from engine.tokenizer import Tokenizer  # lazy: logits work without tokenizer files

        return Tokenizer(self.path)

    @property
    def context_length(self) -> int:
        return self.config.max_position_embeddings

    def make_cache(self) -> KVCache:
        c = self.config
        return KVCache(
            self.ops, c.num_hidden_layers, c.num_key_value_heads, c.head_dim, self.kv_dtype, pool=self.kv_pool
        )

    def _check_room(self, n_new: int, cache: KVCache) -> None:
        if n_new == 0:
            raise ValueError("no token ids given")
        if cache.offset + n_new > self.context_length:
            raise ContextLengthError(
                f"{cache.offset + n_new} tokens ({cache.offset} cached + {n_new} new) exceed the context "
                f"limit of {self.context_length} tokens (max_position_embeddings of {self.name})"
            )

    def forward(
        self,
        ids: list[int],
        cache: KVCache,
        cancel: Callable[[], bool] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Append `ids` to `cache`; return float32 [vocab] logits of the last position.

        Long inputs are prefilled in chunks of `prefill_chunk` tokens; only the last chunk's last
        position goes through the output projection. `cancel` is asked between layers; when it says
        yes, PassCancelled is raised with the current chunk taken back out of the cache.
        `progress(done, len(ids))` is called between layers too (done: the share of tokens whose pass
        is complete, counting layers), and once at the end with done == len(ids).
        A page the cache maps from a block file that another process truncated or rewrote is found
        before and after the pass (`KVCache.lost_from`): its positions and everything after them are
        recomputed from the tokens the cache recorded, so nothing computed from lost numbers is returned.
        """
        pending = list(ids)
        self._check_room(len(pending), cache)
        for _ in range(len(cache.pages) + 2):
            pending = self._recompute_lost(cache, pending)
            out = self._prefill(pending, cache, cancel, progress)
            if cache.lost_from() is None:
                return out
            pending = []  # this pass read a page whose file changed: redo from that page on
        raise KVPagesLost("KV pages kept being lost while recomputing them")

    def _recompute_lost(self, cache: KVCache, ids: list[int]) -> list[int]:
        lost = cache.lost_from()
        if lost is None:
            return ids
        tokens = cache.tokens_between(lost, cache.offset)
        if tokens is None:
            raise KVPagesLost(
                f"positions {lost}..{cache.offset} of the KV cache were lost (their block file changed "
                "under the mapping) and their tokens are not known, so they cannot be recomputed"
            )
        log.warning("KV pages from position %d changed under their mapping; recomputing %d positions",
                    lost, cache.offset - lost)  # fmt: skip
        cache.trim(lost)
        return tokens + ids

    def _prefill(
        self,
        ids: list[int],
        cache: KVCache,
        cancel: Callable[[], bool] | None,
        progress: Callable[[int, int], None] | None,
    ) -> np.ndarray:
        for start in range(0, len(ids), self.prefill_chunk):
            chunk = ids[start : start + self.prefill_chunk]
            last = start + self.prefill_chunk >= len(ids)
            between = _between_layers(cancel, progress, start, len(chunk), len(ids), len(self.network.layers))
            try:
                out = self.network(chunk, cache, "last" if last else "none", between)
            except PassCancelled:
                cache.trim(cache.offset)  # the layers before the check hold positions the last never got
                raise
            cache.record_tokens(chunk)
            self.ops.eval(*([out] if last else []), *cache.arrays())
        if progress is not None:
            progress(len(ids), len(ids))
        return self.ops.to_numpy(out)[0]

    def logits(self, ids: list[int]) -> np.ndarray:
        """float32 [len(ids), vocab] logits of every position, on a fresh cache (tests, parity)."""
        ids = list(ids)
        cache = self.make_cache()
        self._check_room(len(ids), cache)
        rows: list[np.ndarray] = []
        for start in range(0, len(ids), self.prefill_chunk):
            out: Any = self.network(ids[start : start + self.prefill_chunk], cache, "all")
            rows.append(self.ops.to_numpy(out))
        return np.concatenate(rows)


def _between_layers(
    cancel: Callable[[], bool] | None,
    progress: Callable[[int, int], None] | None,
    start: int,
    chunk: int,
    total: int,
    layers: int,
) -> Callable[[], bool] | None:
    """The network's hook before each layer after the first: reports progress, then asks `cancel`."""
    if progress is None:
        return cancel
    done_layers = 0

    def hook() -> bool:
        nonlocal done_layers
        done_layers += 1
        progress(start + chunk * done_layers // layers, total)
        return cancel() if cancel is not None else False

    return hook
