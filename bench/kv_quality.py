"""What a lossy KV block dtype (float16, int8) costs: greedy agreement and logit error after a resume.

A history is prefilled in float32, saved as blocks of `dtype`, and restored into a fresh cache; then both
caches decode greedily. The tail record keeps the last position's logits in float32, so the first token
always agrees: the error shows from the second step on, through attention over the restored K/V.
"""

from __future__ import annotations

from itertools import islice
from typing import Any

import numpy as np

from kvstore.space import space_of
from kvstore.store import BlockStore
from kvstore.tiers import MemoryTier


def _greedy(model: Any, cache: Any, logits: np.ndarray, n: int) -> tuple[list[int], list[np.ndarray]]:
    import engine

    steps = list(islice(engine.decode_from(model, cache, logits), n))
    return [s.token for s in steps], [s.logits for s in steps]


def dtype_agreement(model: Any, ids: list[int], dtype: str, n: int = 256, block_size: int = 16) -> dict:
    """Greedy agreement over n tokens and logit error of a `dtype`-restored cache vs the float32 one.

    - first_divergence: free-running greedy decoding; the index of the first token that differs (n: none).
    - teacher_forced_agreement: fed the float32 continuation, the share of steps whose argmax agrees.
    - max_logit_error: the largest |logit difference| over all teacher-forced steps, and
      max_logit_error_rel: the same divided by the largest |float32 logit| seen.
    """
    ref_cache = model.make_cache()
    last = model.forward(ids, ref_cache)
    store = BlockStore([MemoryTier(1 << 40)], block_size=block_size, dtype=dtype)
    store.save(space_of(model), ref_cache, ids, last)
    store.flush()
    q_cache = model.make_cache()
    res = store.restore(space_of(model), q_cache, ids)
    if res.cached_tokens != len(ids):
        raise RuntimeError(f"restored {res.cached_tokens} of {len(ids)} tokens")
    ref_tokens, ref_logits = _greedy(model, ref_cache, last, n)
    free_cache = model.make_cache()
    store.restore(space_of(model), free_cache, ids)
    q_tokens, _ = _greedy(model, free_cache, res.last_logits, n)
    first_divergence = next(
        (i for i, (a, b) in enumerate(zip(ref_tokens, q_tokens, strict=True)) if a != b), n
    )
    agree, max_err, max_ref = 0, 0.0, 0.0
    logits = res.last_logits
    for token, ref in zip(ref_tokens, ref_logits, strict=True):
        agree += int(np.argmax(logits)) == int(np.argmax(ref))
        max_err = max(max_err, float(np.abs(logits - ref).max()))
        max_ref = max(max_ref, float(np.abs(ref).max()))
        logits = model.forward([token], q_cache)
    return {
        "dtype": dtype,
        "history": len(ids),
        "tokens": n,
        "first_divergence": first_divergence,
        "teacher_forced_agreement": agree / n,
        "max_logit_error": max_err,
        "max_logit_error_rel": max_err / max_ref if max_ref else 0.0,
        "bytes_read": res.bytes_read,
    }
