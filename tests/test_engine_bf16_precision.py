"""Precision "bf16" (engine/precision.py): a bfloat16 checkpoint's prefill products round the activations to
bfloat16 and run on the CPU's matrix unit (kernels_amx.c: Intel AMX), the sums in float32.

The kernel is checked against the same rounding done one float32 sum at a time in plain C, and against
float64 over the rounded numbers; the models against transformers: no further from its float32 logits
than transformers' own bfloat16 run of the same checkpoint. Decode's one-row products stay exact. On a
CPU without the unit the setting is refused with the reason, never run as float32 behind the user's back.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import engine
from engine.backends import numpy_backend, numpy_bf16
from engine.errors import EngineError
from tests.fixtures.tiny_models import TinyModel
from tests.test_engine_bf16 import as_f32, bf16_bits

TinyModels = Callable[[str], TinyModel]
BF16_MODELS = ["qwen3_bf16", "qwen2_bf16", "llama3_bf16"]
rng = np.random.default_rng(18)

missing = numpy_bf16.matrix_unit_missing()
needs_unit = pytest.mark.skipif(missing is not None, reason=f"precision bf16 needs {missing}")


def round_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> nearest bfloat16 (ties to even), as float32: the rounding torch applies."""
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return rounded.astype(np.uint32).view(np.float32)


def unit_weight(rows: int, cols: int) -> numpy_bf16.Bf16Weight:
    w = numpy_bf16.Bf16Weight(bf16_bits(rows, cols))
    w.bf16_products = True
    return w


@needs_unit
@pytest.mark.parametrize(
    ("tokens", "rows", "cols"),
    [(2, 32, 32), (5, 40, 70), (17, 96, 48), (33, 64, 64), (300, 1024, 256), (16, 6144, 64), (257, 70, 96)],
)
def test_the_matrix_unit_multiplies_the_rounded_activations(tokens: int, rows: int, cols: int) -> None:
    w = unit_weight(rows, cols)  # whole tiles, and rows / columns / tokens past the last whole tile
    x = rng.standard_normal((tokens, cols)).astype(np.float32)
    got = numpy_backend.linear(x, w)
    over_rounded = round_bf16(x).astype(np.float64) @ as_f32(w.bits).T.astype(np.float64)
    scale = np.abs(over_rounded).max()
    assert got.shape == (tokens, rows)
    assert np.abs(got - over_rounded).max() <= 1e-5 * scale  # float32 sums of the exact products
    assert np.abs(got - numpy_bf16.rounded_reference(x, w)).max() <= 1e-5 * scale
    exact = x.astype(np.float64) @ as_f32(w.bits).T.astype(np.float64)
    assert np.abs(got - exact).max() > 1e-5 * scale  # the activations really were rounded


def test_rounding_is_to_nearest_even_as_torch_does() -> None:
    import torch

    x = np.concatenate([rng.standard_normal(4096).astype(np.float32) * 100, [1 + 2**-8, 1 + 3 * 2**-8]])
    x = x.astype(np.float32)
    ours = round_bf16(x)
    assert np.array_equal(ours, torch.from_numpy(x).to(torch.bfloat16).float().numpy())
    if missing is None:  # the kernel's own rounding: x times the identity is x rounded
        eye = numpy_bf16.Bf16Weight((np.eye(32, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16))
        eye.bf16_products = True
        got = numpy_backend.linear(x[:4096].reshape(128, 32), eye)
        assert np.array_equal(got.reshape(-1), ours[:4096])


@needs_unit
def test_one_row_stays_exact() -> None:
    w = unit_weight(96, 64)
    x = rng.standard_normal((1, 64)).astype(np.float32)
    exact = x.astype(np.float64) @ as_f32(w.bits).T.astype(np.float64)
    assert np.abs(numpy_backend.linear(x, w) - exact).max() <= 1e-5 * np.abs(exact).max()


def transformers_bf16_logits(tiny: TinyModel) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny.path, torch_dtype=torch.bfloat16).eval()
    with torch.no_grad():
        return model(torch.tensor([tiny.prompt])).logits[0].float().numpy()


@needs_unit
@pytest.mark.parametrize("name", BF16_MODELS)
def test_bf16_logits_are_no_further_from_float32_than_transformers_bf16(
    tiny_model: TinyModels, name: str
) -> None:
    tiny = tiny_model(name)
    reference = tiny.reference_logits  # transformers, float32, from the same bfloat16 weights
    ours = engine.load_model(tiny.path, backend="numpy", precision="bf16").logits(tiny.prompt)
    theirs = transformers_bf16_logits(tiny)
    our_error, their_error = np.abs(ours - reference), np.abs(theirs - reference)
    assert 0 < our_error.max() <= their_error.max()  # not zero: the products really were rounded
    assert np.sqrt((our_error**2).mean()) <= np.sqrt((their_error**2).mean())
    exact = engine.load_model(tiny.path, backend="numpy").logits(tiny.prompt)
    assert np.abs(exact - reference).max() <= 1e-4  # fp32 is untouched by the setting


@needs_unit
def test_bf16_generation_decodes_after_a_bf16_prefill(tiny_model: TinyModels) -> None:
    tiny = tiny_model("qwen3_bf16")
    model = engine.load_model(tiny.path, backend="numpy", precision="bf16")
    cache = model.make_cache()
    last = model.forward(tiny.prompt, cache)
    steps = [int(np.argmax(last))]
    for _ in range(4):
        steps.append(int(np.argmax(model.forward([steps[-1]], cache))))
    assert steps[:2] == tiny.greedy[:2]  # the rounding moves logits by ~1e-2, not the leading tokens


def test_the_precision_is_part_of_the_fingerprint(tiny_model: TinyModels) -> None:
    if missing is not None:
        pytest.skip(f"precision bf16 needs {missing}")
    path = tiny_model("qwen3_bf16").path
    fp32 = engine.load_model(path, backend="numpy")
    assert engine.load_model(path, backend="numpy", precision="bf16").fingerprint != fp32.fingerprint


def test_bf16_on_a_float32_checkpoint_names_what_it_applies_to(tiny_model: TinyModels) -> None:
    if missing is not None:
        pytest.skip(f"precision bf16 needs {missing}")
    with pytest.raises(
        EngineError, match=r"precision bf16 applies to bfloat16 weights only.*use precision fp32"
    ):
        engine.load_model(tiny_model("qwen3").path, backend="numpy", precision="bf16")


def test_a_machine_without_the_unit_is_told_so(
    tiny_model: TinyModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        numpy_bf16, "matrix_unit_missing", lambda: "a CPU with AMX-BF16; this machine has none"
    )
    with pytest.raises(EngineError, match=r"precision bf16 needs a CPU with AMX-BF16.*use precision fp32"):
        engine.load_model(tiny_model("qwen3_bf16").path, backend="numpy", precision="bf16")


def test_mlx_refuses_bf16_naming_the_backend(tiny_model: TinyModels) -> None:
    pytest.importorskip("mlx.core")
    with pytest.raises(EngineError, match=r"precision bf16 is a setting of the numpy backend.*mlx"):
        engine.load_model(tiny_model("qwen3_bf16").path, backend="mlx", precision="bf16")
