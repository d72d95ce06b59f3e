"""MLX-quantized checkpoints stay quantized on both backends (numpy: packed uint32 words with C kernels,
numpy_quant.py) and compute what their dequantized float32 twin computes, to 1e-4."""

from __future__ import annotations

from collections.abc import Callable
from itertools import islice

import mlx.core as mx
import numpy as np
import pytest

import engine
from engine.backends import kernels, numpy_backend, numpy_quant, numpy_threads
from engine.safetensors_io import Checkpoint
from engine.weights import dequantize, weight_summary
from tests.fixtures.tiny_models import TinyModel
from tests.test_engine_kernels import CountingLib

TinyModels = Callable[[str], TinyModel]
QUANTIZED_MODELS = ["qwen3_mlx_q4", "qwen3_mlx_q8", "llama3_mlx_q4", "llama3_mlx_q8"]
rng = np.random.default_rng(18)


def quantized(rows: int, cols: int, group: int, bits: int, scale_dtype: str) -> tuple:
    """mx.quantize of a random [rows, cols] weight: (QuantWeight, its mlx-dequantized float32 values)."""
    w = mx.array(rng.standard_normal((rows, cols)).astype(np.float32))
    wq, scales, biases = mx.quantize(w, group_size=group, bits=bits)
    scales, biases = scales.astype(getattr(mx, scale_dtype)), biases.astype(getattr(mx, scale_dtype))
    # in float32 (as the twin checkpoints are made): mlx computes in the scales' dtype otherwise
    exact = [a.astype(mx.float32) for a in (scales, biases)]
    values = np.array(mx.dequantize(wq, *exact, group_size=group, bits=bits))

    def stored(a: mx.array) -> np.ndarray:  # as a checkpoint holds it: bfloat16 as its uint16 bits
        return np.array(a.view(mx.uint16)) if a.dtype == mx.bfloat16 else np.array(a)

    weight = numpy_quant.weight(np.array(wq), stored(scales), stored(biases), group, bits)
    assert weight is not None
    return weight, values


@pytest.mark.parametrize("bits", [4, 8])
def test_numpy_dequantize_equals_mlx_dequantize(bits: int) -> None:
    w = mx.array(np.random.default_rng(bits).standard_normal((70, 128)).astype(np.float32))
    wq, scales, biases = mx.quantize(w, group_size=32, bits=bits)
    expected = np.array(mx.dequantize(wq, scales, biases, group_size=32, bits=bits))
    got = dequantize(np.array(wq), np.array(scales), np.array(biases), 32, bits)
    assert np.abs(got - expected).max() <= 1e-6


@pytest.mark.parametrize("scale_dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("bits", [4, 8])
def test_c_dequantize_equals_mlx_dequantize(bits: int, group: int, scale_dtype: str) -> None:
    weight, values = quantized(37, 256, group, bits, scale_dtype)
    assert np.abs(weight.dequantize() - values).max() <= 1e-6 * np.abs(values).max()
    assert np.array_equal(weight.dequantize(5, 9), weight.dequantize()[5:9])


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("scale_dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize(("bits", "group"), [(4, 32), (4, 64), (4, 128), (8, 32), (8, 64), (8, 128)])
def test_decode_product_reads_packed_weights(
    monkeypatch: pytest.MonkeyPatch, bits: int, group: int, scale_dtype: str, threads: int
) -> None:
    """One row: one gemv_quant call, vector path and portable path both equal to the product with the
    dequantized weight (row counts not a multiple of 4 and over the 64-row threading threshold)."""
    monkeypatch.setattr(numpy_threads, "DECODE_THREADS", threads)
    weight, values = quantized(301, 256, group, bits, scale_dtype)
    x, b = rng.standard_normal((1, 256)).astype(np.float32), rng.standard_normal(301).astype(np.float32)
    expected = x.astype(np.float64) @ values.T.astype(np.float64)
    tolerance = 1e-5 * max(1.0, np.abs(expected).max())
    counting = CountingLib(kernels.load())
    monkeypatch.setattr(kernels, "_lib", counting)
    got = numpy_backend.linear(x, weight, b)
    assert counting.calls == 1  # one gemv_quant, nothing dequantized in numpy
    assert got.shape == (1, 301) and np.abs(got - (expected + b)).max() <= tolerance
    portable = np.empty((1, 301), dtype=np.float32)
    numpy_quant.gemv(weight, x, portable, portable=True)
    assert np.abs(portable - expected).max() <= tolerance


@pytest.mark.parametrize("bits", [4, 8])
def test_decode_product_with_columns_not_a_multiple_of_64(bits: int) -> None:
    """160 columns in groups of 32: the 4-bit loop over blocks of 64 columns does not apply."""
    weight, values = quantized(70, 160, 32, bits, "float16")
    x = rng.standard_normal((1, 160)).astype(np.float32)
    expected = x.astype(np.float64) @ values.T.astype(np.float64)
    assert np.abs(numpy_backend.linear(x, weight) - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max())


def test_this_machine_takes_the_vector_path() -> None:
    lib = kernels.load()
    assert lib is not None
    lib.quant_vector_path.restype = kernels.ctypes.c_int64
    flags = kernels._cpu_flags().split()
    assert lib.quant_vector_path() == int({"avx2", "fma", "f16c"} <= set(flags))


def test_prefill_product_dequantizes_blocks_for_blas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(numpy_quant, "DEQUANT_BLOCK_BYTES", 4 * 128 * 10)  # 10 rows at a time: 7 blocks
    weight, values = quantized(67, 128, 64, 4, "float16")
    x = rng.standard_normal((3, 5, 128)).astype(np.float32)  # any leading shape
    got = numpy_backend.linear(x, weight)
    assert got.shape == (3, 5, 67)
    expected = x @ values.T
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


def test_embedding_dequantizes_only_the_rows_it_reads() -> None:
    table, values = quantized(50, 64, 32, 8, "bfloat16")
    got = numpy_backend.embedding(table, [3, 3, 49, 0])
    assert got.dtype == np.float32 and np.abs(got - values[[3, 3, 49, 0]]).max() <= 1e-6


def test_unsupported_bits_or_group_fall_back_to_float32() -> None:
    packed = np.zeros((4, 4), np.uint32)
    assert numpy_quant.weight(packed, np.ones((4, 1), np.float16), np.ones((4, 1), np.float16), 64, 2) is None


@pytest.mark.parametrize("name", QUANTIZED_MODELS)
@pytest.mark.parametrize("backend", ["numpy", "mlx"])
def test_quantized_logits_equal_dequantized_twin(tiny_model: TinyModels, name: str, backend: str) -> None:
    tiny = tiny_model(name)
    quantized_model = engine.load_model(tiny.path, backend=backend)
    twin = engine.load_model(tiny.twin.path, backend=backend)
    # The 16-bit scales/biases are exact in float32, so both paths compute with the same weights.
    assert np.abs(quantized_model.logits(tiny.prompt) - twin.logits(tiny.prompt)).max() <= 1e-4


def decode_logits(model: engine.Model, prompt: list[int], steps: int = 6) -> np.ndarray:
    """Logits of the last `steps` prompt tokens fed one at a time (decode's one-row products)."""
    cache = model.make_cache()
    model.forward(prompt[:-steps], cache)
    return np.stack([model.forward([token], cache) for token in prompt[-steps:]])


@pytest.mark.parametrize("name", QUANTIZED_MODELS)
def test_numpy_decode_equals_twin_and_plain_numpy_fallback(
    tiny_model: TinyModels, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny = tiny_model(name)
    packed = decode_logits(engine.load_model(tiny.path, backend="numpy"), tiny.prompt)
    twin = decode_logits(engine.load_model(tiny.twin.path, backend="numpy"), tiny.prompt)
    assert np.abs(packed - twin).max() <= 1e-4
    monkeypatch.setattr(kernels, "_lib", None)  # no C loops: the loader dequantizes at load instead
    plain = engine.load_model(tiny.path, backend="numpy")
    assert isinstance(plain.network.layers[0].mlp.down, np.ndarray)
    assert np.abs(decode_logits(plain, tiny.prompt) - packed).max() <= 1e-4


@pytest.mark.parametrize("name", QUANTIZED_MODELS)
def test_numpy_keeps_every_matrix_packed_at_its_file_size(tiny_model: TinyModels, name: str) -> None:
    tiny = tiny_model(name)
    model = engine.load_model(tiny.path, backend="numpy")
    net, bits = model.network, int(name[-1])
    layers = [(layer.self_attn, layer.mlp) for layer in net.layers]
    matrices = [
        net.embed_tokens,
        net.lm_head,
        *(w for a, m in layers for w in (a.qkv, a.o_proj, m.gate_up, m.down)),
    ]
    assert net.matrices() == list({id(w): w for w in matrices}.values())  # tied: the table once
    assert all(isinstance(w, numpy_quant.QuantWeight) and w.bits == bits for w in matrices)
    checkpoint = Checkpoint(tiny.path)  # the file's packed weights, scales, biases: its 2-D tensors
    infos = [checkpoint.info(name) for name in checkpoint.names()]
    file_bytes = sum(i.end - i.start for i in infos if len(i.shape) == 2)
    summary = weight_summary(net.matrices())
    group = {"qwen3": 32, "llama": 64}[tiny.arch]
    assert list(summary) == [f"q{bits} g{group}"] and summary[f"q{bits} g{group}"] == file_bytes
    twin_bytes = sum(
        weight_summary(engine.load_model(tiny.twin.path, backend="numpy").network.matrices()).values()
    )
    assert file_bytes < twin_bytes * (bits + 1) / 32 + 1  # packed: ~bits/32 of the float32 twin, not 1x


def test_mlx_keeps_weights_quantized(tiny_model: TinyModels) -> None:
    from engine.backends.mlx_backend import QuantizedWeight

    on_mlx = engine.load_model(tiny_model("qwen3_mlx_q4").path, backend="mlx").network
    assert (
        isinstance(on_mlx.layers[0].self_attn.qkv, QuantizedWeight)
        and on_mlx.layers[0].self_attn.qkv.bits == 4
    )
    assert isinstance(on_mlx.embed_tokens, QuantizedWeight)


@pytest.mark.parametrize("backend", ["numpy", "mlx"])
def test_quantized_greedy_matches_twin(tiny_model: TinyModels, backend: str) -> None:
    tiny = tiny_model("qwen3_mlx_q4")
    runs = []
    for path in (tiny.path, tiny.twin.path):
        model = engine.load_model(path, backend=backend)
        runs.append([step.token for step in islice(engine.generate_tokens(model, list(tiny.prompt)), 16)])
    assert runs[0] == runs[1]
