"""Precision "int8": decode products of MLX 4/8-bit weights with the activation vector quantized to int8
per block of 32 and integer dot products (kernels_q8act.c), an opt-in setting beside the exact "fp32".

The kernels are checked against a float64 evaluation of the same int8 maths (the integer sums are exact,
so only float32 rounding separates them); the models against the exact path and the float model the
quantized one was made from: what int8 activations cost, next to what the weight quantization costs."""

from __future__ import annotations

from collections.abc import Callable
from itertools import islice

import numpy as np
import pytest

import engine
from engine.backends import kernels, numpy_backend, numpy_quant, numpy_threads
from engine.backends.numpy_threads import address
from engine.errors import EngineError
from tests.fixtures.tiny_models import TinyModel
from tests.test_engine_quantized import QUANTIZED_MODELS, quantized

TinyModels = Callable[[str], TinyModel]
rng = np.random.default_rng(8)


def c_quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """kernels_q8act.c's quantizer: int8 values and one float32 scale per block of 32."""
    lib = kernels.load()
    assert lib is not None
    q, d = np.empty(x.size, np.int8), np.empty(x.size // 32, np.float32)
    lib.q8act_quantize(address(x), x.size, address(q), address(d))
    return q, d


def as_float64(part: np.ndarray) -> np.ndarray:
    if part.dtype == np.uint16:  # bfloat16 bits
        return (part.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return part.astype(np.float64)


def int8_reference(w: numpy_quant.QuantWeight, x: np.ndarray) -> np.ndarray:
    """y = sum_g s_g * sum_{blocks k of g} d_k * sum_i q_i xq_i + b_g * sum_{i in g} x_i, in float64."""
    rows, cols = w.shape
    per_word = 32 // w.bits
    shifts = np.arange(per_word, dtype=np.uint32) * w.bits
    q = ((w.packed[:, :, None] >> shifts) & ((1 << w.bits) - 1)).reshape(rows, cols).astype(np.int64)
    xq, d = c_quantize(x.reshape(-1))
    block_sums = (q * xq.astype(np.int64)).reshape(rows, cols // 32, 32).sum(-1)  # exact integers
    group_dots = (block_sums * d.astype(np.float64)).reshape(rows, cols // w.group_size, -1).sum(-1)
    x_sums = x.astype(np.float64).reshape(cols // w.group_size, w.group_size).sum(-1)
    return (as_float64(w.scales) * group_dots).sum(-1) + (as_float64(w.biases) * x_sums).sum(-1)


def int8_weight(rows: int, cols: int, group: int, bits: int, scale_dtype: str) -> numpy_quant.QuantWeight:
    weight, _ = quantized(rows, cols, group, bits, scale_dtype)
    weight.int8_activations = True
    return weight


class NamedCalls:
    """The real library, recording the names of the functions called."""

    def __init__(self, lib: object) -> None:
        self.lib, self.names = lib, []

    def __getattr__(self, name: str) -> Callable:
        fn = getattr(self.lib, name)

        def called(*args: object) -> None:
            self.names.append(name)
            fn(*args)

        return called


def test_activations_round_to_int8_per_block_of_32() -> None:
    x = rng.standard_normal(128).astype(np.float32)
    x[32:64] = 0.0  # an all-zero block: scale 0, values 0
    x[64] = -40.0  # one large value: its block's scale is 40 / 127, the value itself -127
    q, d = c_quantize(x)
    blocks = x.reshape(-1, 32)
    expected_d = (np.abs(blocks).max(-1) / np.float32(127)).astype(np.float32)
    assert np.array_equal(d, expected_d)
    inverse = np.divide(np.float32(1), expected_d, out=np.zeros_like(expected_d), where=expected_d > 0)
    assert np.array_equal(q.reshape(-1, 32), np.rint(blocks * inverse[:, None]).astype(np.int8))
    assert q[64] == -127 and np.abs(q).max() == 127 and not q[32:64].any()


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("scale_dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize(("bits", "group"), [(4, 32), (4, 64), (4, 128), (8, 32), (8, 64), (8, 128)])
def test_decode_product_is_the_int8_maths_on_both_paths(
    monkeypatch: pytest.MonkeyPatch, bits: int, group: int, scale_dtype: str, threads: int
) -> None:
    """One gemv_q8act call per product (301 rows: odd, over the threading threshold); the vector and the
    portable path equal the float64 int8 reference to float32 rounding, and each other as closely."""
    monkeypatch.setattr(numpy_threads, "DECODE_THREADS", threads)
    weight = int8_weight(301, 256, group, bits, scale_dtype)
    x, b = rng.standard_normal((1, 256)).astype(np.float32), rng.standard_normal(301).astype(np.float32)
    expected = int8_reference(weight, x)
    tolerance = 2e-6 * np.abs(expected).max()
    calls = NamedCalls(kernels.load())
    monkeypatch.setattr(kernels, "_lib", calls)
    got = numpy_backend.linear(x, weight, b)
    assert calls.names == ["gemv_q8act"]
    assert got.shape == (1, 301) and np.abs(got[0] - b - expected).max() <= tolerance
    portable = np.empty((1, 301), dtype=np.float32)
    numpy_quant.gemv(weight, x, portable, portable=True)
    assert np.abs(portable[0] - expected).max() <= tolerance
    assert np.abs(portable - (got - b)).max() <= tolerance


ODD_SHAPES = [(3, 64, 64), (7, 160, 32), (70, 160, 32), (65, 384, 128), (9, 4160, 32), (5, 9216, 128)]


@pytest.mark.parametrize(("rows", "cols", "group"), ODD_SHAPES)
@pytest.mark.parametrize("bits", [4, 8])
def test_decode_product_at_odd_shapes(bits: int, rows: int, cols: int, group: int) -> None:
    """Fewer rows than a group of four, a tail of rows, 4-bit columns that are not a multiple of 64 (the
    64-column vector loop does not apply: those rows take the portable loop), rows of more groups than
    the vector loops widen scales for at once (64), and x over the 32 KB the C side keeps on its stack."""
    weight = int8_weight(rows, cols, group, bits, "float16")
    x = rng.standard_normal((1, cols)).astype(np.float32)
    expected = int8_reference(weight, x)
    got = numpy_backend.linear(x, weight)
    assert np.abs(got[0] - expected).max() <= 2e-6 * np.abs(expected).max()


@pytest.mark.parametrize("portable", [False, True])
@pytest.mark.parametrize("bits", [4, 8])
def test_extreme_values_do_not_saturate(bits: int, portable: bool) -> None:
    """Every q at its largest (255 or 15) or 0, every activation at +-127: the int16 pair sums inside the
    AVX2 loop are at their limits. Scale 1, bias 0 and x integers keep the product an exact integer."""
    rows, cols, top = 8, 256, (1 << bits) - 1
    q = np.where(rng.random((rows, cols)) < 0.7, top, 0).astype(np.uint32)
    q[0], q[1] = top, 0  # a row all at the top, a row all zero
    per_word = 32 // bits
    packed = (q.reshape(rows, -1, per_word) << (np.arange(per_word, dtype=np.uint32) * bits)).sum(-1)
    ones = np.ones((rows, cols // 32), np.float32)
    weight = numpy_quant.weight(packed.astype(np.uint32), ones, np.zeros_like(ones), 32, bits)
    assert weight is not None
    weight.int8_activations = True
    x = np.where(rng.random((1, cols)) < 0.5, -127.0, 127.0).astype(np.float32)
    y = np.empty((1, rows), np.float32)
    numpy_quant.gemv(weight, x, y, portable=portable)
    assert np.array_equal(y[0], (q.astype(np.int64) @ x[0].astype(np.int64)).astype(np.float32))


def float_model_path(tiny: TinyModel) -> str:
    """The float checkpoint the fixture quantized (tests/fixtures/tiny_models.py build_quantized)."""
    path = tiny.path.with_name(f"{tiny.name}_base")
    assert (path / "config.json").is_file()
    return str(path)


def forced_logits(model: engine.Model, prompt: list[int], tokens: list[int]) -> np.ndarray:
    """Decode logits with `tokens` fed in (teacher forcing): every step sees the same context."""
    cache = model.make_cache()
    steps = [model.forward(prompt, cache)]
    steps += [model.forward([token], cache) for token in tokens[:-1]]
    return np.concatenate(steps).reshape(len(tokens), -1)


def relative_rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2) / np.mean(b**2)))


@pytest.mark.parametrize("name", QUANTIZED_MODELS)
def test_int8_decode_costs_no_more_than_the_weight_quantization(tiny_model: TinyModels, name: str) -> None:
    """Over 24 decode steps of the exact model's greedy continuation: the int8 logits' error against the
    exact path, beside the exact path's error against the float model (the weight quantization's cost).
    4-bit: int8 adds under half of what 4-bit weights cost (measured 0.14-0.15x). 8-bit: activations of
    8 bits per 32 and weights of 8 bits per group cost the same order (measured 1.1-2.3x in rms), and the
    int8 error stays under 8% rms of the logits (measured 4.9-5.1% on these 2-layer random models);
    the argmax agrees with the exact path on most steps (measured 84-97%)."""
    tiny = tiny_model(name)
    exact = engine.load_model(tiny.path, backend="numpy")
    int8 = engine.load_model(tiny.path, backend="numpy", precision="int8")
    assert exact.precision == "fp32" and int8.precision == "int8"
    tokens = [step.token for step in islice(engine.generate_tokens(exact, list(tiny.prompt)), 24)]
    e, i, f = (
        forced_logits(m, tiny.prompt, tokens)
        for m in (exact, int8, engine.load_model(float_model_path(tiny), backend="numpy"))
    )
    int8_error, weight_error = relative_rms(i, e), relative_rms(e, f)
    if name.endswith("q4"):
        assert int8_error <= 0.5 * weight_error
    else:
        assert int8_error <= 3 * weight_error and int8_error <= 0.08
    assert np.mean(i.argmax(-1) == e.argmax(-1)) >= 0.8
    free_run = [step.token for step in islice(engine.generate_tokens(int8, list(tiny.prompt)), 3)]
    assert free_run == tokens[:3]


def test_int8_prefill_stays_exact_and_is_fingerprinted_apart(tiny_model: TinyModels) -> None:
    """Products of many rows (prefill) dequantize for BLAS as before; stored KV blocks of one precision
    never serve the other (int8 decode writes other keys and values)."""
    tiny = tiny_model("qwen3_mlx_q4")
    exact = engine.load_model(tiny.path, backend="numpy")
    int8 = engine.load_model(tiny.path, backend="numpy", precision="int8")
    assert np.abs(int8.logits(tiny.prompt) - exact.logits(tiny.prompt)).max() <= 1e-6
    assert int8.fingerprint != exact.fingerprint
    assert engine.load_model(tiny.path, backend="numpy", precision="fp32").fingerprint == exact.fingerprint
    assert all(w.int8_activations for w in int8.network.matrices())
    assert not any(w.int8_activations for w in exact.network.matrices())


def test_int8_on_unquantized_weights_is_an_error(tiny_model: TinyModels) -> None:
    with pytest.raises(EngineError, match=r"precision int8 applies to quantized weights only.*bf16"):
        engine.load_model(tiny_model("qwen3_bf16").path, backend="numpy", precision="int8")


def test_int8_without_the_c_kernels_is_an_error(
    tiny_model: TinyModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the C loops a quantized checkpoint is dequantized at load: nothing for int8 to apply to."""
    monkeypatch.setattr(kernels, "_lib", None)
    with pytest.raises(EngineError, match=r"quantized weights only.*f32"):
        engine.load_model(tiny_model("qwen3_mlx_q8").path, backend="numpy", precision="int8")


def test_int8_is_a_numpy_setting_and_precisions_are_checked(tiny_model: TinyModels) -> None:
    path = tiny_model("qwen3_mlx_q4").path
    with pytest.raises(EngineError, match=r"precision int8 is a setting of the numpy backend.*mlx"):
        engine.load_model(path, backend="mlx", precision="int8")
    with pytest.raises(EngineError, match=r"unknown precision 'int4': choose one of fp32, int8"):
        engine.load_model(path, backend="numpy", precision="int4")
