"""bfloat16 checkpoints on the numpy backend keep their weights as bfloat16 (half the bytes a decode step
streams) and compute exactly what the same weights widened to float32 compute."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import engine
from engine.backends import kernels, numpy_backend, numpy_bf16, numpy_threads
from tests.fixtures.tiny_models import TinyModel
from tests.test_engine_kernels import CountingLib

TinyModels = Callable[[str], TinyModel]
rng = np.random.default_rng(5)


def bf16_bits(*shape: int) -> np.ndarray:
    """Random bfloat16 bits of normal-ish values (the top halves of float32 draws)."""
    x = rng.standard_normal(shape).astype(np.float32)
    return (x.view(np.uint32) >> 16).astype(np.uint16)


def as_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def test_widening_is_exact_for_every_bit_pattern() -> None:
    bits = np.arange(1 << 16, dtype=np.uint16).reshape(256, 256)
    got = numpy_bf16.widen(bits)
    assert np.array_equal(got.view(np.uint32), bits.astype(np.uint32) << 16)  # NaNs and infs included


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(("rows", "cols"), [(301, 37), (5, 8), (1030, 64), (70, 1000)])
def test_decode_product_widens_in_c(
    monkeypatch: pytest.MonkeyPatch, threads: int, rows: int, cols: int
) -> None:
    counting = CountingLib(kernels.load())
    monkeypatch.setattr(kernels, "_lib", counting)
    monkeypatch.setattr(numpy_threads, "DECODE_THREADS", threads)
    w = numpy_bf16.Bf16Weight(bf16_bits(rows, cols))
    x, b = rng.standard_normal((1, cols)).astype(np.float32), rng.standard_normal(rows).astype(np.float32)
    got = numpy_backend.linear(x, w, b)
    assert counting.calls == 1  # one gemv_bf16, nothing widened in numpy
    expected = x.astype(np.float64) @ as_f32(w.bits).T.astype(np.float64) + b
    assert got.shape == (1, rows) and np.abs(got - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max())
    same_as_f32 = numpy_backend.linear(x, as_f32(w.bits), b)  # the float32 weight's own C product
    assert np.abs(got - same_as_f32).max() <= 1e-5 * max(1.0, np.abs(expected).max())


def test_prefill_product_widens_blocks_for_blas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(numpy_bf16, "WIDEN_BLOCK_BYTES", 4 * 64 * 10)  # 10 rows of 64 at a time: 7 blocks
    monkeypatch.setattr(numpy_bf16, "GEMM_MAX_TOKENS", 0)  # longer than the direct product's crossover
    w = numpy_bf16.Bf16Weight(bf16_bits(67, 64))
    x = rng.standard_normal((3, 5, 64)).astype(np.float32)  # any leading shape
    got = numpy_backend.linear(x, w)
    assert got.shape == (3, 5, 67)
    expected = x @ as_f32(w.bits).T  # BLAS on the same float32 values (blocks may round differently)
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


def test_embedding_widens_only_the_rows_it_reads() -> None:
    table = numpy_bf16.Bf16Weight(bf16_bits(50, 24))
    ids = [3, 3, 49, 0]
    got = numpy_backend.embedding(table, ids)
    assert got.dtype == np.float32 and np.array_equal(got, as_f32(table.bits)[ids])


@pytest.mark.parametrize("name", ["qwen3_bf16", "qwen2_bf16", "llama3_bf16"])
def test_a_bf16_checkpoint_stays_bf16_on_numpy(tiny_model: TinyModels, name: str) -> None:
    model = engine.load_model(tiny_model(name).path, backend="numpy")
    net = model.network
    layers = [(layer.self_attn, layer.mlp) for layer in net.layers]
    weights = [w for a, m in layers for w in (a.qkv, a.o_proj, m.gate_up, m.down)]
    assert all(isinstance(w, numpy_bf16.Bf16Weight) for w in [net.embed_tokens, net.lm_head, *weights])
    assert (net.lm_head is net.embed_tokens) == model.config.tie_word_embeddings  # tied: one table
    if name == "qwen2_bf16":  # biases and norms are float32 vectors
        assert all(a.qkv_bias.dtype == np.float32 for a, _ in layers)
    assert net.norm.dtype == np.float32


def test_bf16_weights_compute_what_their_float32_widening_computes(
    tiny_model: TinyModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny = tiny_model("qwen3_bf16")
    kept = engine.load_model(tiny.path, backend="numpy")
    monkeypatch.setattr(numpy_backend, "bf16_weight", lambda bits: None)  # the backend declines: float32
    widened = engine.load_model(tiny.path, backend="numpy")
    assert isinstance(widened.network.layers[0].mlp.down, np.ndarray)
    assert widened.network.layers[0].mlp.down.dtype == np.float32
    # prefill: a short prompt takes gemm_bf16 (test_engine_bf16_gemm.py), float32 BLAS: same float32
    # products, added in another order
    assert np.abs(kept.logits(tiny.prompt) - widened.logits(tiny.prompt)).max() <= 1e-5
    caches = kept.make_cache(), widened.make_cache()
    for model, cache in zip((kept, widened), caches, strict=True):
        model.forward(tiny.prompt, cache)
    for token in (5, 17, 2):  # decode: C products, bf16 rows widened in registers
        a, b = kept.forward([token], caches[0]), widened.forward([token], caches[1])
        assert np.abs(a - b).max() <= 1e-5


def test_without_the_c_loops_bf16_checkpoints_load_as_float32(
    tiny_model: TinyModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny = tiny_model("qwen3_bf16")
    monkeypatch.setattr(kernels, "load", lambda: None)
    model = engine.load_model(tiny.path, backend="numpy")
    down = model.network.layers[0].mlp.down
    assert isinstance(down, np.ndarray) and down.dtype == np.float32
    assert np.abs(model.logits(tiny.prompt) - tiny.reference_logits).max() <= 1e-4


def test_float32_checkpoints_stay_float32(tiny_model: TinyModels) -> None:
    model = engine.load_model(tiny_model("qwen3").path, backend="numpy")
    qkv = model.network.layers[0].self_attn.qkv
    assert isinstance(qkv, np.ndarray) and qkv.dtype == np.float32
