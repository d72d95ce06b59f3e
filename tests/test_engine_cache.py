"""KVCache: the contract's offset / update_and_fetch / export / extend / write + commit / trim, and
linear growth."""

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
    cache = KVCache(ops, n_layers=2, n_kv_heads=2, head_dim=4)
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


def test_growth_is_geometric_not_per_step() -> None:
    cache = KVCache(get_backend("numpy"), n_layers=1, n_kv_heads=2, head_dim=4, step=16)
    one = np.zeros((2, 1, 4), np.float32)
    capacities = set()
    for _ in range(5000):
        cache.update_and_fetch(0, one, one)
        capacities.add(cache.capacity(0))
    # Each reallocation at least doubles: 16 -> 5000 tokens takes at most ~9 copies, never one per step.
    assert len(capacities) <= 10
    assert cache.capacity(0) < 2 * 5000 + 16


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


def test_writes_from_several_threads_then_commit_equal_extend() -> None:
    """A restore's reader threads fill disjoint ranges of a reserved numpy cache, out of order; the
    length covers them only once committed."""
    rng = np.random.default_rng(5)
    blocks = [rng.standard_normal((2, 2, 8, 4)).astype(np.float32) for _ in range(4)]
    filled = KVCache(get_backend("numpy"), n_layers=2, n_kv_heads=2, head_dim=4)
    assert filled.parallel_writes
    filled.reserve(32)
    for i in (2, 0, 3, 1):
        filled.write(8 * i, blocks[i], -blocks[i])
    assert filled.offset == 0
    filled.commit(32)
    extended = KVCache(get_backend("numpy"), n_layers=2, n_kv_heads=2, head_dim=4)
    for b in blocks:
        extended.extend(b, -b)
    got, want = filled.export(0, 32), extended.export(0, 32)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_writes_and_commits_beyond_the_reserved_room_are_refused() -> None:
    cache = KVCache(get_backend("numpy"), n_layers=2, n_kv_heads=2, head_dim=4, step=16)
    cache.reserve(16)
    block = np.zeros((2, 2, 8, 4), np.float32)
    with pytest.raises(ValueError, match="reserved"):
        cache.write(12, block, block)
    with pytest.raises(ValueError, match="reserved"):
        cache.commit(17)
    with pytest.raises(ValueError, match="shape"):
        cache.write(0, block[:1], block[:1])


def test_only_numpy_caches_take_writes_from_several_threads() -> None:
    assert not KVCache(get_backend("mlx"), n_layers=1, n_kv_heads=1, head_dim=4).parallel_writes
