"""Helpers of the KV block tests: tiny models with room for long histories, greedy decoding, references.

Also a child-process entry point (`python -m tests.kv_helpers resume MODEL_DIR IDS_JSON`) that resumes a
history from the stores of the environment it inherits (WORKBENCH_HOME, REDIS_URL).
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import sys
import tempfile
from itertools import islice
from pathlib import Path

import numpy as np

from kvstore.space import space_of
from kvstore.store import BlockStore

BS = 16  # block size of the tests: small, so short histories span several blocks
MAX_POSITIONS = 1024


def store_with(tiers: list, **kw) -> BlockStore:
    return BlockStore(tiers, block_size=BS, **kw)


def save_history(model, store: BlockStore, ids: list[int], with_logits: bool = True) -> np.ndarray:
    """Prefill `ids` and save them (complete blocks, plus a tail record with the last logits)."""
    cache = model.make_cache()
    last = model.forward(ids, cache)
    store.save(space_of(model), cache, ids, last if with_logits else None)
    store.flush()
    return last


@functools.cache
def tiny_model_dir(seed: int) -> Path:
    """engine-core's tiny Qwen3 fixture (GQA, odd sizes, random weights), with a longer context."""
    from tests.fixtures.tiny_models import _SMALL, Spec, build_spec

    spec = Spec(
        "qwen3", "qwen3", "v5", tied=False, sizes={**_SMALL, "max_position_embeddings": MAX_POSITIONS}
    )
    root = Path(tempfile.mkdtemp(prefix="wb-kv-models-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return build_spec(f"qwen3_kv_seed{seed}", spec, root, seed).path


def load(path: Path):
    import engine

    return engine.load_model(str(path), backend="numpy")


def tiny_model(seed: int = 0):
    return load(tiny_model_dir(seed))


def history(n: int, seed: int = 0, vocab: int = 300) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(0, vocab, n)]


def greedy(model, cache, last_logits: np.ndarray, n: int) -> tuple[list[int], list[np.ndarray]]:
    """n greedy tokens from `last_logits`; also the logits each step saw."""
    import engine

    steps = list(islice(engine.decode_from(model, cache, last_logits), n))
    return [s.token for s in steps], [s.logits for s in steps]


def reference(model, ids: list[int], n: int) -> tuple[np.ndarray, list[int], list[np.ndarray]]:
    """Recompute everything from scratch: last logits, n greedy tokens and their logits."""
    cache = model.make_cache()
    last = model.forward(ids, cache)
    tokens, logits = greedy(model, cache, last, n)
    return last, tokens, logits


def _resume(model_dir: str, ids_json: str) -> None:
    from kvstore.open import open_block_store

    model = load(Path(model_dir))
    ids = json.loads(ids_json)
    store = open_block_store()
    cache = model.make_cache()
    res = store.restore(space_of(model), cache, ids)
    last = res.last_logits if res.last_logits is not None else model.forward(ids[cache.offset :], cache)
    shared = cache.shared_pages
    tokens, logits = greedy(model, cache, last, 12)
    print(json.dumps({"cached_tokens": res.cached_tokens, "by_tier": res.by_tier, "tokens": tokens,
                      "shared_pages": shared, "logits": [x.tolist() for x in [last, *logits]]}))  # fmt: skip


if __name__ == "__main__":
    if sys.argv[1] == "resume":
        _resume(sys.argv[2], sys.argv[3])
