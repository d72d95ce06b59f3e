"""engine.kvpool: a model's caches reuse the key/value pages of caches that are gone, never a page
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


PAGE = 16
PAGE_BYTES = 2 * 2 * 2 * PAGE * 4 * 4  # keys and values of 2 layers, 2 heads, 16 positions, 4 dims


def pooled_cache(pool: ArrayPool, n_layers: int = 2) -> KVCache:
    return KVCache(ops, n_layers=n_layers, n_kv_heads=2, head_dim=4, page_size=PAGE, pool=pool)


def fill(cache: KVCache, t: int, value: float = 1.0) -> None:
    block = np.full((2, t, 4), value, np.float32)
    for layer in range(cache.n_layers):
        cache.update_and_fetch(layer, block, block)


def addresses(cache: KVCache) -> set[int]:
    return {a.__array_interface__["data"][0] for p in cache.pages for a in (p.k, p.v)}


def page_of(shape_layers: int = 2) -> tuple[tuple[int, ...], str]:
    return (2, shape_layers, 2, PAGE, 4), "float32"


def test_a_cache_that_is_gone_gives_its_pages_to_the_next() -> None:
    pool = ArrayPool(ops.empty)
    first = pooled_cache(pool)
    fill(first, 20)
    memory = addresses(first)
    assert pool.allocations == 2  # two pages of 16 positions
    del first
    second = pooled_cache(pool)
    fill(second, 20)
    assert addresses(second) == memory
    assert pool.allocations == 2
    assert pool.kept_bytes == 0 and pool.in_use_bytes == pool.peak_bytes


def test_a_page_still_viewed_outside_its_cache_is_not_reused() -> None:
    pool = ArrayPool(ops.empty)
    first = pooled_cache(pool)
    fill(first, 20)
    kept_keys = first.pages[0].k[0]  # a view of the first page
    seen = kept_keys.copy()
    del first
    second = pooled_cache(pool)
    fill(second, 20, value=7.0)
    assert not any(np.shares_memory(kept_keys, p.k) for p in second.pages)
    assert np.array_equal(kept_keys, seen)
    assert pool.allocations == 3  # the viewed page was allocated again, the other one reused


def test_pages_a_trim_drops_go_back_to_the_pool() -> None:
    pool = ArrayPool(ops.empty)
    cache = pooled_cache(pool)
    fill(cache, 40)  # three pages
    last = cache.pages[2].k.__array_interface__["data"][0]
    cache.trim(20)  # the third page holds none of the first 20 positions
    assert len(cache.pages) == 2 and pool.kept_bytes == PAGE_BYTES
    other = pooled_cache(pool)
    fill(other, 5)
    assert other.pages[0].k.__array_interface__["data"][0] == last


def test_the_pool_keeps_no_more_than_the_peak_in_use() -> None:
    pool = ArrayPool(ops.empty)
    shape, dtype = page_of()
    taken = [pool.take(shape, dtype) for _ in range(2)]
    assert pool.allocations == 2 and pool.peak_bytes == 2 * PAGE_BYTES
    pool.give(taken)
    pool.give([pool.take(shape, dtype)])  # a kept page, handed out and given back
    assert pool.allocations == 2
    assert pool.kept_bytes == 2 * PAGE_BYTES == pool.peak_bytes


def test_only_pages_of_the_same_shape_and_dtype_are_handed_out() -> None:
    pool = ArrayPool(ops.empty)
    shape, dtype = page_of()
    pool.give([pool.take(shape, dtype)])
    others = [((2, 3, 2, PAGE, 4), "float32"), ((2, 2, 2, 8, 4), "float32"), (shape, "float16")]
    for other, other_dtype in others:
        array = pool.take(other, other_dtype)
        assert array.shape == other and array.dtype == np.dtype(other_dtype)
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
    assert pool.in_use_bytes == 0 and pool.kept_bytes == PAGE_BYTES


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
    assert pool.allocations < 4 * 30 * 2  # most pages came from the pool


def test_a_reused_cache_gives_the_logits_of_a_fresh_one(tiny_model: TinyModels) -> None:
    tiny = tiny_model("qwen3")
    pooled = engine.load_model(tiny.path, backend="numpy")
    unpooled = engine.load_model(tiny.path, backend="numpy")
    unpooled.kv_pool = None
    long_cache = pooled.make_cache()
    pooled.forward(tiny.prompt[:40], long_cache)  # fills pages with another prompt's keys and values
    del long_cache
    allocated = pooled.kv_pool.allocations
    reused = pooled.make_cache()
    short = tiny.prompt[5:17]
    assert np.array_equal(pooled.forward(short, reused), unpooled.forward(short, unpooled.make_cache()))
    assert pooled.kv_pool.allocations == allocated


def test_a_chunked_prefill_takes_one_page_per_page_size_positions(tiny_model: TinyModels) -> None:
    tiny = tiny_model("llama3_tied")
    model = engine.load_model(tiny.path, backend="numpy")
    model.prefill_chunk = 8
    c = model.config
    layers, heads, head_dim = c.num_hidden_layers, c.num_key_value_heads, c.head_dim
    cache = KVCache(model.ops, layers, heads, head_dim, page_size=16, pool=model.kv_pool)
    model.forward(tiny.prompt[:40], cache)  # five chunks
    assert model.kv_pool.allocations == 3 and cache.capacity() == 48


def test_mlx_models_have_no_pool(tiny_model: TinyModels) -> None:
    pytest.importorskip("mlx.core")
    model = engine.load_model(tiny_model("qwen3").path, backend="mlx")
    assert model.kv_pool is None and model.make_cache().pool is None


def test_clear_lets_every_kept_page_go() -> None:
    pool = ArrayPool(ops.empty)
    shape, dtype = page_of()
    pool.give([pool.take(shape, dtype)])
    pool.clear()
    assert pool.kept_bytes == 0
    pool.take(shape, dtype)
    assert pool.allocations == 2
