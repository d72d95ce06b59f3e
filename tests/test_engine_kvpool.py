"""engine.kvpool: a model's caches reuse the key/value arrays of caches that are gone, never an array
something still views, never keeping more than the caches held at their peak; results never change."""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable

import numpy as np
import pytest

import engine
from engine.backends import get_backend
from engine.cache import KVCache
from engine.kvpool import ArrayPool
from tests.fixtures.tiny_models import TinyModel

TinyModels = Callable[[str], TinyModel]
ops = get_backend("numpy")


def pooled_cache(pool: ArrayPool, n_layers: int = 2) -> KVCache:
    return KVCache(ops, n_layers=n_layers, n_kv_heads=2, head_dim=4, step=16, pool=pool)


def fill(cache: KVCache, t: int, value: float = 1.0) -> None:
    block = np.full((2, t, 4), value, np.float32)
    for layer in range(cache.n_layers):
        cache.update_and_fetch(layer, block, block)


def addresses(cache: KVCache) -> set[int]:
    return {a.__array_interface__["data"][0] for a in cache.keys + cache.values}


def test_a_cache_that_is_gone_gives_its_arrays_to_the_next() -> None:
    pool = ArrayPool(ops.empty)
    first = pooled_cache(pool)
    fill(first, 10)
    memory = addresses(first)
    assert pool.allocations == 4  # keys and values of two layers
    del first
    second = pooled_cache(pool)
    fill(second, 10)
    assert addresses(second) == memory
    assert pool.allocations == 4
    assert pool.kept_bytes == 0 and pool.in_use_bytes == pool.peak_bytes


def test_an_array_still_viewed_outside_its_cache_is_not_reused() -> None:
    pool = ArrayPool(ops.empty)
    first = pooled_cache(pool)
    fill(first, 10)
    zeros = np.zeros((2, 1, 4), np.float32)
    kept_keys, kept_values = first.update_and_fetch(0, zeros, zeros)  # views of layer 0's arrays
    seen = kept_keys.copy(), kept_values.copy()
    del first
    second = pooled_cache(pool)
    fill(second, 11, value=7.0)
    for view, before in zip((kept_keys, kept_values), seen, strict=True):
        assert not any(np.shares_memory(view, a) for a in second.keys + second.values)
        assert np.array_equal(view, before)
    assert pool.allocations == 6  # layer 0's keys and values were allocated again, layer 1's reused


def test_outgrown_arrays_go_back_to_the_pool() -> None:
    pool = ArrayPool(ops.empty)
    growing = pooled_cache(pool, n_layers=1)
    fill(growing, 16)
    small = addresses(growing)
    fill(growing, 1)  # 17 positions: capacity 16 -> 32, the 16-position arrays are given back
    assert growing.capacity(0) == 32 and pool.kept_bytes == 2 * 2 * 16 * 4 * 4
    other = pooled_cache(pool, n_layers=1)
    fill(other, 16)
    assert addresses(other) == small


def test_the_pool_keeps_no_more_than_the_peak_in_use_and_drops_the_smallest_first() -> None:
    pool = ArrayPool(ops.empty)
    small = [pool.take(2, 16, 4, "float32")]
    pool.give(small)
    big = [pool.take(2, 64, 4, "float32")]  # the small one does not fit: a new array
    big_address = big[0].__array_interface__["data"][0]
    assert pool.allocations == 2 and pool.peak_bytes == 2 * 64 * 4 * 4
    pool.give(big)
    assert pool.kept_bytes == pool.peak_bytes  # the small one was dropped to stay within the peak
    again = pool.take(2, 20, 4, "float32")
    assert again.shape == (2, 64, 4) and again.__array_interface__["data"][0] == big_address


def test_only_arrays_of_the_same_heads_head_size_and_dtype_are_handed_out() -> None:
    pool = ArrayPool(ops.empty)
    pool.give([pool.take(2, 16, 4, "float32")])
    for heads, head_dim, dtype in [(3, 4, "float32"), (2, 8, "float32"), (2, 4, "float16")]:
        array = pool.take(heads, 16, head_dim, dtype)
        assert array.shape == (heads, 16, head_dim) and array.dtype == np.dtype(dtype)
    assert pool.allocations == 4


def test_a_cache_the_collector_frees_inside_the_pools_lock_does_not_deadlock() -> None:
    pool = ArrayPool(ops.empty)

    def collect_while_busy() -> None:
        cache = pooled_cache(pool)
        fill(cache, 10)
        cache.itself = cache  # a reference cycle: only the cyclic collector frees it
        del cache
        with pool._lock:  # as when the collector runs at an allocation inside take() or give()
            gc.collect()

    worker = threading.Thread(target=collect_while_busy, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "the finalizer waited for the lock its own thread holds"
    assert pool.in_use_bytes == 0 and pool.kept_bytes == 4 * 2 * 16 * 4 * 4


def test_caches_built_and_dropped_on_several_threads_keep_the_books_straight() -> None:
    pool = ArrayPool(ops.empty)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            rng = np.random.default_rng(seed)
            for _ in range(30):
                cache = pooled_cache(pool)
                fill(cache, int(rng.integers(1, 70)))
                del cache
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert pool.in_use_bytes == 0
    assert 0 < pool.kept_bytes <= pool.peak_bytes
    assert pool.allocations < 4 * 30 * 4  # most arrays came from the pool


def test_a_reused_cache_gives_the_logits_of_a_fresh_one(tiny_model: TinyModels) -> None:
    tiny = tiny_model("qwen3")
    pooled = engine.load_model(tiny.path, backend="numpy")
    unpooled = engine.load_model(tiny.path, backend="numpy")
    unpooled.kv_pool = None
    long_cache = pooled.make_cache()
    pooled.forward(tiny.prompt[:40], long_cache)  # fills arrays with another prompt's keys and values
    del long_cache
    allocated = pooled.kv_pool.allocations
    reused = pooled.make_cache()
    short = tiny.prompt[5:17]
    assert np.array_equal(pooled.forward(short, reused), unpooled.forward(short, unpooled.make_cache()))
    assert pooled.kv_pool.allocations == allocated


def test_a_chunked_prefill_allocates_its_cache_once(tiny_model: TinyModels) -> None:
    tiny = tiny_model("llama3_tied")
    model = engine.load_model(tiny.path, backend="numpy")
    model.prefill_chunk = 8
    c = model.config
    # capacity steps of 16: chunk by chunk the cache would grow 16 -> 32 -> 64
    layers, heads, head_dim = c.num_hidden_layers, c.num_key_value_heads, c.head_dim
    cache = KVCache(model.ops, layers, heads, head_dim, step=16, pool=model.kv_pool)
    model.forward(tiny.prompt[:40], cache)  # five chunks
    assert model.kv_pool.allocations == 2 * c.num_hidden_layers
    assert cache.capacity(0) == 48


def test_mlx_models_have_no_pool(tiny_model: TinyModels) -> None:
    pytest.importorskip("mlx.core")
    model = engine.load_model(tiny_model("qwen3").path, backend="mlx")
    assert model.kv_pool is None and model.make_cache().pool is None


def test_clear_lets_every_kept_array_go() -> None:
    pool = ArrayPool(ops.empty)
    pool.give([pool.take(2, 16, 4, "float32")])
    pool.clear()
    assert pool.kept_bytes == 0
    pool.take(2, 16, 4, "float32")
    assert pool.allocations == 2
