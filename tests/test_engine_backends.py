"""Backend operations against plain reference formulas, on both backends, incl. the numpy backend's
blocked and multi-threaded paths (inputs big enough to take them)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.backends import get_backend, numpy_attention, numpy_backend, numpy_threads
from engine.errors import EngineError

BACKENDS = ["numpy", "mlx"]
rng = np.random.default_rng(7)


def reference_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, offset: int) -> np.ndarray:
    h, t, _ = q.shape
    hkv, s, _ = k.shape
    out = np.empty_like(q, dtype=np.float64)
    for head in range(h):
        kv = head // (h // hkv)
        scores = (q[head].astype(np.float64) @ k[kv].T.astype(np.float64)) * scale
        scores[np.arange(s)[None, :] > offset + np.arange(t)[:, None]] = -np.inf
        p = np.exp(scores - scores.max(axis=-1, keepdims=True))
        out[head] = (p / p.sum(axis=-1, keepdims=True)) @ v[kv]
    return out


def reference_rope(x: np.ndarray, offset: int, inv_freq: np.ndarray) -> np.ndarray:
    t, d = x.shape[1], x.shape[2]
    angles = np.arange(offset, offset + t)[:, None] * inv_freq.astype(np.float64)[None, :]
    cos, sin = np.cos(np.concatenate([angles, angles], -1)), np.sin(np.concatenate([angles, angles], -1))
    rotated = np.concatenate([-x[..., d // 2 :], x[..., : d // 2]], axis=-1)
    return x * cos + rotated * sin


def f32(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("t", "s"), [(1, 1), (1, 37), (5, 5), (6, 20), (300, 300)])
def test_sdpa_is_causal_grouped_attention(backend: str, t: int, s: int) -> None:
    ops = get_backend(backend)
    q, k, v = f32(6, t, 16), f32(2, s, 16), f32(2, s, 16)
    got = ops.to_numpy(ops.sdpa(ops.asarray(q), ops.asarray(k), ops.asarray(v), 0.25, s - t))
    assert np.abs(got - reference_attention(q, k, v, 0.25, s - t)).max() < 1e-5


def test_numpy_sdpa_row_blocks_and_threads_match(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(numpy_attention, "ATTENTION_ROWS", 48)  # 300 rows -> 7 blocks, last one partial
    monkeypatch.setattr(numpy_threads, "PARALLEL_MIN_ELEMENTS", 1000)
    q, k, v = f32(8, 300, 16), f32(2, 340, 16), f32(2, 340, 16)
    got = numpy_backend.sdpa(q, k, v, 0.25, 40)
    assert np.abs(got - reference_attention(q, k, v, 0.25, 40)).max() < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("offset", [0, 1000])
def test_rope_rotates_half(backend: str, offset: int) -> None:
    ops = get_backend(backend)
    x, inv_freq = f32(4, 200, 32), (1.0 / 10000 ** (np.arange(0, 32, 2) / 32)).astype(np.float32)
    got = ops.to_numpy(ops.rope(ops.asarray(x), offset, ops.asarray(inv_freq, "float32")))
    assert np.abs(got - reference_rope(x, offset, inv_freq)).max() < 1e-3 * (1 + offset / 100)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rope_can_rms_normalise_each_head_first(backend: str) -> None:
    ops = get_backend(backend)
    x, w = f32(4, 30, 32), f32(32)
    inv_freq = (1.0 / 10000 ** (np.arange(0, 32, 2) / 32)).astype(np.float32)
    x64 = x.astype(np.float64)
    normed = (x64 / np.sqrt((x64**2).mean(-1, keepdims=True) + 1e-6) * w).astype(np.float32)
    got = ops.to_numpy(ops.rope(ops.asarray(x), 5, ops.asarray(inv_freq, "float32"), ops.asarray(w), 1e-6))
    assert np.abs(got - reference_rope(normed, 5, inv_freq)).max() < 1e-4


def test_numpy_threaded_elementwise_equals_single_block(monkeypatch: pytest.MonkeyPatch) -> None:
    gate, up, x = f32(64, 40), f32(64, 40), f32(6, 50, 16)
    inv_freq = (1.0 / 10000 ** (np.arange(0, 16, 2) / 16)).astype(np.float32)
    single = numpy_backend.silu_mul(gate, up), numpy_backend.rope(x, 3, inv_freq)
    monkeypatch.setattr(numpy_threads, "PARALLEL_MIN_ELEMENTS", 100)
    threaded = numpy_backend.silu_mul(gate, up), numpy_backend.rope(x, 3, inv_freq)
    assert all(np.array_equal(a, b) for a, b in zip(single, threaded, strict=True))


@pytest.mark.parametrize("backend", BACKENDS)
def test_elementwise_ops_match_formulas(backend: str) -> None:
    ops = get_backend(backend)
    x, w, b = f32(7, 24), f32(24), f32(24)
    a = ops.asarray
    x64 = x.astype(np.float64)
    rms = x64 / np.sqrt((x64**2).mean(-1, keepdims=True) + 1e-6) * w
    mean, var = x64.mean(-1, keepdims=True), x64.var(-1, keepdims=True)
    erf = np.vectorize(math.erf)
    expected = {
        "rms_norm": (ops.rms_norm(a(x), a(w), 1e-6), rms),
        "layer_norm": (ops.layer_norm(a(x), a(w), a(b), 1e-5), (x64 - mean) / np.sqrt(var + 1e-5) * w + b),
        "silu": (ops.silu(a(x)), x64 / (1 + np.exp(-x64))),
        "silu_mul": (ops.silu_mul(a(x), a(x[::-1].copy())), x64 / (1 + np.exp(-x64)) * x64[::-1]),
        "gelu": (ops.gelu(a(x)), 0.5 * x64 * (1 + erf(x64 / math.sqrt(2)))),
        "softmax": (ops.softmax(a(x)), np.exp(x64) / np.exp(x64).sum(-1, keepdims=True)),
    }
    for name, (got, want) in expected.items():
        assert np.abs(ops.to_numpy(got) - want).max() < 2e-5, name


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_and_embedding(backend: str) -> None:
    ops = get_backend(backend)
    x, w, bias, table = f32(5, 24), f32(40, 24), f32(40), f32(50, 24)
    prepared = ops.linear_weight(w)
    assert (
        np.abs(ops.to_numpy(ops.linear(ops.asarray(x), prepared, ops.asarray(bias))) - (x @ w.T + bias)).max()
        < 1e-4
    )
    assert np.abs(ops.to_numpy(ops.linear(ops.asarray(x), ops.asarray(w))) - x @ w.T).max() < 1e-4
    assert np.array_equal(ops.to_numpy(ops.embedding(ops.asarray(table), [3, 0, 49])), table[[3, 0, 49]])


def test_default_backend_is_numpy_without_a_gpu() -> None:
    import mlx.core as mx

    expected = "mlx" if mx.metal.is_available() else "numpy"
    assert get_backend(None).name == expected
    with pytest.raises(EngineError, match="unknown backend 'cuda'"):
        get_backend("cuda")
