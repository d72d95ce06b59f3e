"""MLX-quantized checkpoints: kept quantized on mlx, dequantized once on numpy, both equal to the
dequantized float32 twin."""

from __future__ import annotations

from collections.abc import Callable
from itertools import islice

import mlx.core as mx
import numpy as np
import pytest

import engine
from engine.weights import dequantize
from tests.fixtures.tiny_models import TinyModel

TinyModels = Callable[[str], TinyModel]


@pytest.mark.parametrize("bits", [4, 8])
def test_numpy_dequantize_equals_mlx_dequantize(bits: int) -> None:
    w = mx.array(np.random.default_rng(bits).standard_normal((70, 128)).astype(np.float32))
    wq, scales, biases = mx.quantize(w, group_size=32, bits=bits)
    expected = np.array(mx.dequantize(wq, scales, biases, group_size=32, bits=bits))
    got = dequantize(np.array(wq), np.array(scales), np.array(biases), 32, bits)
    assert np.abs(got - expected).max() <= 1e-6


@pytest.mark.parametrize("name", ["qwen3_mlx_q4", "qwen3_mlx_q8"])
@pytest.mark.parametrize("backend", ["numpy", "mlx"])
def test_quantized_logits_equal_dequantized_twin(tiny_model: TinyModels, name: str, backend: str) -> None:
    tiny = tiny_model(name)
    quantized = engine.load_model(tiny.path, backend=backend)
    twin = engine.load_model(tiny.twin.path, backend=backend)
    # The float16 scales/biases are exact in float32, so both paths compute the same weights.
    assert np.abs(quantized.logits(tiny.prompt) - twin.logits(tiny.prompt)).max() <= 1e-4


def test_mlx_keeps_weights_quantized_numpy_dequantizes(tiny_model: TinyModels) -> None:
    from engine.backends.mlx_backend import QuantizedWeight

    tiny = tiny_model("qwen3_mlx_q4")
    on_mlx = engine.load_model(tiny.path, backend="mlx").network
    on_numpy = engine.load_model(tiny.path, backend="numpy").network
    mlx_attn, np_attn = on_mlx.layers[0].self_attn, on_numpy.layers[0].self_attn
    assert isinstance(mlx_attn.qkv, QuantizedWeight) and mlx_attn.qkv.bits == 4
    assert isinstance(on_mlx.embed_tokens, QuantizedWeight)
    assert isinstance(np_attn.qkv, np.ndarray) and np_attn.qkv.dtype == np.float32


def test_quantized_greedy_matches_twin_on_mlx(tiny_model: TinyModels) -> None:
    tiny = tiny_model("qwen3_mlx_q4")
    runs = []
    for path in (tiny.path, tiny.twin.path):
        model = engine.load_model(path, backend="mlx")
        runs.append([step.token for step in islice(engine.generate_tokens(model, list(tiny.prompt)), 16)])
    assert runs[0] == runs[1]
