"""Restoring into a cache: all or nothing, the reader threads that fill a numpy cache in place, and one
reserve() before the blocks arrive."""

from __future__ import annotations

import threading
import time

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
    # numpy caches are filled by the reader threads (write), others on the caller's thread (extend)
    method = "write" if cache.parallel_writes else "extend"
    real = getattr(cache, method)

    def failing_on_the_third_block(*args) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise MemoryError("no room for the KV cache")
        real(*args)

    setattr(cache, method, failing_on_the_third_block)
    res = store.restore(space_of(model), cache, ids)
    assert res.cached_tokens == 0 and res.by_tier == {} and calls["n"] == 3
    assert cache.offset == BS
    after = cache.export(0, BS)
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])
    assert store.counters["restore_failures"] == 1


def test_restore_returns_only_after_every_reader_is_done_writing(model) -> None:
    """Readers fill a numpy cache in place: one still writing after restore() returned would overwrite
    the positions the caller prefills next."""
    ids = history(6 * BS)
    store = store_with([MemoryTier()])
    save_history(model, store, ids)
    cache = model.make_cache()
    assert cache.parallel_writes
    real, writing, lock, next_block_started = cache.write, [0], threading.Lock(), threading.Event()

    def write(start: int, k, v) -> None:
        with lock:
            writing[0] += 1
        try:
            if start == 2 * BS:  # ends the run at block 2 while block 3 is still being written
                assert next_block_started.wait(5)
                raise MemoryError("no room for the KV cache")
            if start == 3 * BS:
                next_block_started.set()
                time.sleep(0.3)
            real(start, k, v)
        finally:
            with lock:
                writing[0] -= 1

    cache.write = write
    res = store.restore(space_of(model), cache, ids)
    assert writing[0] == 0  # nobody writes into the cache any more
    assert next_block_started.is_set() and res.cached_tokens == 0 and cache.offset == 0


def test_a_bad_block_mid_run_keeps_the_blocks_before_it_in_a_parallel_filled_cache(model) -> None:
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


def test_restore_asks_a_cache_that_can_reserve_for_room_once(model) -> None:
    store = store_with([MemoryTier()])
    ids = history(3 * BS + 2)
    save_history(model, store, ids)
    cache = model.make_cache()
    asked: list[int] = []
    real_reserve = cache.reserve

    def reserve(n: int, headroom: int = 0) -> None:  # one call, before the blocks
        asked.append(n)
        real_reserve(n, headroom)

    cache.reserve = reserve
    assert store.restore(space_of(model), cache, ids).cached_tokens == len(ids)
    assert asked == [3 * BS + BS]


def test_tokens_appended_after_a_restore_never_regrow_the_cache(model) -> None:
    store = store_with([MemoryTier()])
    ids = history(3 * BS)
    save_history(model, store, ids)
    cache = model.make_cache()
    prompt = [*ids, *history(BS + 2, seed=5)]  # more new tokens than the block of room restores used to leave
    assert store.restore(space_of(model), cache, prompt).cached_tokens == len(ids)
    arrays = [id(k) for k in cache.keys]
    model.forward(prompt[len(ids) :], cache)
    for token in history(64, seed=6):  # a reply, one token at a time
        model.forward([token], cache)
    assert [id(k) for k in cache.keys] == arrays  # nothing reallocated, nothing copied to grow
