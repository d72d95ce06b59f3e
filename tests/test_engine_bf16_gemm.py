"""Short prefills with bfloat16 weights (kernels_gemm.c): up to numpy_bf16.GEMM_MAX_TOKENS rows go through
gemm_bf16, which reads each weight row once for all rows and widens it in registers, instead of widening
the whole matrix into a float32 buffer for BLAS. Exact float32 maths: it equals the float64 product to
float32 rounding, and a model's logits stay within the transformers parity."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import engine
from engine.backends import kernels, numpy_backend, numpy_bf16, numpy_threads
from tests.fixtures.tiny_models import TinyModel

TinyModels = Callable[[str], TinyModel]
rng = np.random.default_rng(18)


class NamedCalls:
    """The real library, recording the names of the C functions called."""

    def __init__(self, lib: object) -> None:
        self.lib, self.names = lib, []

    def __getattr__(self, name: str) -> Callable:
        fn = getattr(self.lib, name)

        def called(*args: object) -> object:
            self.names.append(name)
            return fn(*args)

        return called


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> NamedCalls:
    lib = kernels.load()
    assert lib is not None, "the C loops must build on this machine (gcc is part of the set-up)"
    recorder = NamedCalls(lib)
    monkeypatch.setattr(kernels, "_lib", recorder)
    return recorder


def bf16_weight(rows: int, cols: int) -> tuple[numpy_bf16.Bf16Weight, np.ndarray]:
    """A random bfloat16 weight and its exact float32 widening."""
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    bits = (x.view(np.uint32) >> 16).astype(np.uint16)
    return numpy_bf16.Bf16Weight(bits), (bits.astype(np.uint32) << 16).view(np.float32)


def close_to_float64(got: np.ndarray, x: np.ndarray, w: np.ndarray) -> bool:
    expected = x.astype(np.float64) @ w.astype(np.float64).T
    return got.shape == expected.shape and np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


@pytest.mark.parametrize("portable", [False, True])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(
    ("tokens", "rows", "cols"),
    [(2, 5, 8), (7, 301, 37), (13, 130, 1024), (6, 1031, 64), (64, 200, 1000), (1, 65, 16)],
)  # token tiles of 6 with every remainder, an odd last row, columns past the last group of 8
def test_a_short_prefill_product_is_one_c_call_equal_to_float64(
    calls: NamedCalls, monkeypatch: pytest.MonkeyPatch, portable: bool, threads: int, tokens: int, rows: int,
    cols: int,
) -> None:  # fmt: skip
    monkeypatch.setattr(numpy_threads, "DECODE_THREADS", threads)
    w, wf = bf16_weight(rows, cols)
    x = rng.standard_normal((tokens, cols)).astype(np.float32)
    got = numpy_bf16.gemm(x, w, portable=portable)
    assert calls.names == ["gemm_bf16"]  # the weight is never widened into a buffer
    assert close_to_float64(got, x, wf)


def test_linear_takes_the_direct_product_up_to_the_crossover(calls: NamedCalls) -> None:
    w, wf = bf16_weight(67, 64)
    short = rng.standard_normal((3, 5, 64)).astype(np.float32)  # any leading shape: 15 rows
    got = numpy_backend.linear(short, w)
    assert calls.names == ["gemm_bf16"] and got.shape == (3, 5, 67)
    assert close_to_float64(got.reshape(15, 67), short.reshape(15, 64), wf)
    calls.names.clear()
    long = rng.standard_normal((numpy_bf16.GEMM_MAX_TOKENS + 1, 64)).astype(np.float32)
    got = numpy_backend.linear(long, w)
    assert "gemm_bf16" not in calls.names and "widen_bf16" in calls.names  # widened blocks for BLAS
    assert close_to_float64(got, long, wf)


def test_this_machine_takes_the_vector_path() -> None:
    lib = kernels.load()
    assert lib is not None
    lib.gemm_vector_path.restype = kernels.ctypes.c_int64
    flags = kernels._cpu_flags().split()
    assert lib.gemm_vector_path() == int({"avx2", "fma"} <= set(flags))


@pytest.mark.parametrize("name", ["qwen3_bf16", "qwen2_bf16", "llama3_bf16"])
def test_bf16_models_prefill_through_it_within_the_transformers_parity(
    tiny_model: TinyModels, calls: NamedCalls, name: str
) -> None:
    tiny = tiny_model(name)
    model = engine.load_model(tiny.path, backend="numpy")
    assert len(tiny.prompt) <= numpy_bf16.GEMM_MAX_TOKENS
    calls.names.clear()
    logits = model.logits(tiny.prompt)
    assert "gemm_bf16" in calls.names and "widen_bf16" not in calls.names[1:]  # only the token lookup widens
    assert np.abs(logits - tiny.reference_logits).max() <= 1e-4
