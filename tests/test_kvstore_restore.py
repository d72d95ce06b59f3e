"""Restoring into a cache: all or nothing, and the restored blocks are the cache's pages as they were
stored or received (never copied), shared with every other cache of the process that holds them."""

from __future__ import annotations

import numpy as np
import pytest

from kvstore.space import space_of
from kvstore.tiers import MemoryTier
from tests.kv_helpers import BS, history, save_history, store_with, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0)


def test_restore_is_all_or_nothing(model) -> None:
    ids = history(4 * BS)
    store = store_with([MemoryTier()])
    save_history(model, store, ids)
    cache = model.make_cache()
    prefix = ids[:BS]
    model.forward(prefix, cache)
    before = cache.export(0, BS)
    calls = {"n": 0}
    real = cache.append_block

    def failing_on_the_third_block(*args) -> bool:
        calls["n"] += 1
        if calls["n"] == 3:
            raise MemoryError("no room for the KV cache")
        return real(*args)

    cache.append_block = failing_on_the_third_block
    res = store.restore(space_of(model), cache, ids)
    assert res.cached_tokens == 0 and res.by_tier == {} and calls["n"] == 3
    assert cache.offset == BS
    after = cache.export(0, BS)
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])
    assert store.counters["restore_failures"] == 1


def test_a_bad_block_mid_run_keeps_the_blocks_before_it(model) -> None:
    ids = history(5 * BS)
    tier = MemoryTier()
    store = store_with([tier])
    save_history(model, store, ids)
    third = store.session_keys(space_of(model), ids)[2]
    tier.put(third, b"WBKV" + bytes(64))  # corrupt: dropped, the run stops before it
    cache = model.make_cache()
    res = store.restore(space_of(model), cache, ids)
    assert res.cached_tokens == 2 * BS and cache.offset == 2 * BS and res.dropped == 1
    fresh = model.make_cache()
    model.forward(ids[: 2 * BS], fresh)
    got, want = cache.export(0, 2 * BS), fresh.export(0, 2 * BS)
    assert np.abs(got[0] - want[0]).max() <= 1e-5 and np.abs(got[1] - want[1]).max() <= 1e-5


def test_restored_pages_view_the_stored_bytes(model) -> None:
    tier = MemoryTier()
    store = store_with([tier])
    ids = history(3 * BS + 5)
    save_history(model, store, ids)
    cache = model.make_cache()
    assert store.restore(space_of(model), cache, ids).cached_tokens == len(ids)
    assert cache.shared_pages == len(cache.pages) == 4  # three blocks and the tail, each a page
    for key, page in zip(store.session_keys(space_of(model), ids), cache.pages, strict=True):
        stored = np.frombuffer(tier.get(key), np.uint8)
        assert np.shares_memory(page.k, stored) and np.shares_memory(page.v, stored)


def test_a_block_another_cache_holds_is_shared_not_read_again(model) -> None:
    tier = MemoryTier()
    store = store_with([tier])
    ids = history(3 * BS)
    save_history(model, store, ids)
    first = model.make_cache()
    store.restore(space_of(model), first, ids)
    tier.clear()  # not even the memory tier has them now: only the first cache does
    second = model.make_cache()
    res = store.restore(space_of(model), second, ids)
    assert res.cached_tokens == len(ids) and res.by_tier == {"memory": len(ids)}
    assert all(a.k is b.k for a, b in zip(first.pages, second.pages, strict=True))


def test_tokens_appended_after_a_restore_never_copy_the_restored_pages(model) -> None:
    store = store_with([MemoryTier()])
    ids = history(3 * BS)
    save_history(model, store, ids)
    cache = model.make_cache()
    prompt = [*ids, *history(BS + 2, seed=5)]
    assert store.restore(space_of(model), cache, prompt).cached_tokens == len(ids)
    restored = [p.k for p in cache.pages]
    model.forward(prompt[len(ids) :], cache)
    for token in history(64, seed=6):  # a reply, one token at a time
        model.forward([token], cache)
    assert all(p.k is k for p, k in zip(cache.pages, restored, strict=False))  # nothing moved or copied
    assert cache.offset == len(prompt) + 64
