"""KVCache: the contract's offset / update_and_fetch / export / extend / append_block / trim; growing
appends pages and never copies; stored blocks become pages as they are."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import engine
from engine.backends import get_backend
from engine.cache import KVCache
from tests.fixtures.tiny_models import TinyModel

TinyModels = Callable[[str], TinyModel]


def kv(rng: np.random.Generator, t: int) -> tuple[np.ndarray, np.ndarray]:
    return (
        rng.standard_normal((2, t, 4)).astype(np.float32),
        rng.standard_normal((2, t, 4)).astype(np.float32),
    )


@pytest.mark.parametrize("backend", ["numpy", "mlx"])
def test_update_and_fetch_returns_everything_so_far(backend: str) -> None:
    ops = get_backend(backend)
    cache = KVCache(ops, n_layers=2, n_kv_heads=2, head_dim=4, page_size=16)
    rng = np.random.default_rng(0)
    written = []
    for t in (5, 1, 300):
        k, v = kv(rng, t)
        written.append((k, v))
        for layer in range(2):
            assert cache.offset == sum(x[0].shape[1] for x in written[:-1])  # unchanged until the last layer
            k_all, v_all = cache.update_and_fetch(layer, ops.asarray(k), ops.asarray(v))
        assert cache.offset == sum(x[0].shape[1] for x in written)
    expected_k = np.concatenate([x[0] for x in written], axis=1)
    assert np.array_equal(ops.to_numpy(k_all), expected_k)
    assert np.array_equal(ops.to_numpy(v_all), np.concatenate([x[1] for x in written], axis=1))


def test_growing_appends_pages_and_never_moves_what_is_held() -> None:
    cache = KVCache(get_backend("numpy"), n_layers=1, n_kv_heads=2, head_dim=4, page_size=16)
    one = np.ones((2, 1, 4), np.float32)
    cache.update_and_fetch(0, one, one)
    first = cache.pages[0].k
    for _ in range(4999):
        cache.update_and_fetch(0, one, one)
    assert len(cache.pages) == -(-5000 // 16) and cache.capacity() == len(cache.pages) * 16
    assert cache.pages[0].k is first  # the first page was never reallocated or copied


def test_export_extend_round_trip_restores_the_same_logits(tiny_model: TinyModels) -> None:
    tiny = tiny_model("qwen3")
    model = engine.load_model(tiny.path, backend="numpy")
    original = model.make_cache()
    model.forward(tiny.prompt[:30], original)
    k, v = original.export(0, 30)
    assert k.shape == (3, 2, 30, 8) and k.dtype == np.float32
    restored = model.make_cache()
    restored.extend(k[:, :, :20], v[:, :, :20])
    restored.extend(k[:, :, 20:], v[:, :, 20:])
    assert restored.offset == 30
    nxt = tiny.prompt[30:31]
    assert np.array_equal(model.forward(nxt, restored), model.forward(nxt, original))


def test_export_is_a_copy(tiny_model: TinyModels) -> None:
    model = engine.load_model(tiny_model("qwen3").path, backend="numpy")
    cache = model.make_cache()
    model.forward([5, 6, 7], cache)
    k, _ = cache.export(1, 3)
    k[:] = 0
    assert np.abs(cache.export(1, 3)[0]).max() > 0


@pytest.mark.parametrize("backend", ["numpy", "mlx"])
def test_trim_then_recompute_matches(tiny_model: TinyModels, backend: str) -> None:
    tiny = tiny_model("qwen2")
    model = engine.load_model(tiny.path, backend=backend)
    cache = model.make_cache()
    model.forward(tiny.prompt[:20], cache)
    expected = model.forward(tiny.prompt[20:25], cache)
    cache.trim(20)
    assert cache.offset == 20
    assert np.abs(model.forward(tiny.prompt[20:25], cache) - expected).max() <= 1e-6


def test_out_of_range_export_trim_and_extend_are_refused() -> None:
    cache = KVCache(get_backend("numpy"), n_layers=2, n_kv_heads=2, head_dim=4)
    with pytest.raises(ValueError, match="outside"):
        cache.export(0, 1)
    with pytest.raises(ValueError, match="trim"):
        cache.trim(3)
    with pytest.raises(ValueError, match="shape"):
        cache.extend(np.zeros((1, 2, 3, 4), np.float32), np.zeros((1, 2, 3, 4), np.float32))


def block(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    shape = (2, 2, n, 4)
    return rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape).astype(np.float32)


def test_a_stored_block_becomes_a_page_without_a_copy() -> None:
    rng = np.random.default_rng(5)
    cache = KVCache(get_backend("numpy"), n_layers=2, n_kv_heads=2, head_dim=4, page_size=16)
    k, v = block(rng, 8)
    k.flags.writeable = v.flags.writeable = False  # as the bytes of a received block are
    assert cache.append_block(k, v, list(range(8)))
    assert cache.pages[0].k is k and not cache.pages[0].writable and cache.offset == 8
    assert cache.tokens_between(0, 8) == list(range(8))
    got_k, _ = cache.export(0, 8)
    assert np.array_equal(got_k, k)


def test_blocks_that_cannot_be_pages_are_copied() -> None:
    rng = np.random.default_rng(6)
    cache = KVCache(get_backend("numpy"), n_layers=2, n_kv_heads=2, head_dim=4, page_size=16)
    cache.extend(*block(rng, 3))  # a partly filled page of the cache's own: a block cannot follow it
    k, v = block(rng, 8)
    assert not cache.append_block(k, v)
    assert not cache.append_block(k.astype(np.float16), v.astype(np.float16))  # another dtype
    assert cache.offset == 19 and cache.shared_pages == 0
    assert np.array_equal(cache.export(3, 11)[0], k)


def test_writing_after_a_trim_into_a_stored_block_copies_that_page_only() -> None:
    rng = np.random.default_rng(7)
    cache = KVCache(get_backend("numpy"), n_layers=2, n_kv_heads=2, head_dim=4, page_size=16)
    blocks = [block(rng, 8) for _ in range(2)]
    for k, v in blocks:
        assert cache.append_block(k.copy(), v.copy())
    first = cache.pages[0].k
    stored = cache.pages[1].k.copy()
    cache.trim(12)
    new = np.full((2, 1, 4), 9.0, np.float32)
    for layer in range(2):
        cache.update_and_fetch(layer, new, new)
    assert cache.pages[0].k is first and cache.pages[1].writable and cache.shared_pages == 1
    assert np.array_equal(cache.export(8, 12)[0], stored[:, :, :4])  # the kept rows, copied
    assert np.array_equal(cache.pages[1].k[:, :, 4], np.full((2, 2, 4), 9.0))


def test_mlx_copies_stored_blocks_into_its_own_arrays() -> None:
    cache = KVCache(get_backend("mlx"), n_layers=2, n_kv_heads=2, head_dim=4, page_size=16)
    k, v = block(np.random.default_rng(8), 8)
    assert not cache.append_block(k, v)
    assert np.array_equal(cache.export(0, 8)[0], k)
