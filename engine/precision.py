"""Precision settings: how a loaded model computes its products (engine.load_model(precision=...)).

- "fp32" (the default): float32 arithmetic on the weights as stored; a quantized model's logits equal
  its dequantized twin's to 1e-4.
- "int8": for MLX 4/8-bit weights kept packed on the numpy backend, a decode step's activation vector is
  quantized to int8 per block of 32 and multiplied in integers (kernels_q8act.c), as llama.cpp's
  Q8_0/Q4_0 do: faster decode, different numbers (tests/test_engine_quant_int8.py bounds how much).
  Prefill stays exact. It is a setting of the numpy backend's CPU kernels only, and applies to quantized
  weights only: asked for anywhere else it is an error, never silently ignored.
- "bf16": for bfloat16 weights on the numpy backend, the products of more than one row (prefill) round
  the activations to bfloat16 and run on the CPU's bfloat16 matrix unit (kernels_amx.c: Intel AMX),
  sums in float32, as llama.cpp's F16 path rounds its activations: several times float32 BLAS's speed,
  different numbers (tests/test_engine_bf16_precision.py: no further from transformers' float32 logits
  than transformers' own bfloat16 run). Decode's one-row products stay exact: they are bound by the
  weight bytes, not arithmetic. A CPU without the unit (or a kernel that does not grant it) gets an
  error naming what is missing, never a silent float32 run.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from engine.errors import EngineError
from engine.weights import weight_summary

PRECISIONS = ("fp32", "int8", "bf16")
APPLIES_TO = {
    "int8": "quantized weights only (MLX 4/8-bit, groups of 32/64/128, kept packed by the numpy backend's "
    "C kernels)",
    "bf16": "bfloat16 weights only (a bf16 checkpoint, kept as bf16 by the numpy backend's C kernels)",
}
DEFAULT = "fp32"


def check(precision: str, ops: ModuleType) -> None:
    """Before loading: a known precision the backend has; EngineError naming the setting otherwise."""
    if precision not in PRECISIONS:
        raise EngineError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision not in getattr(ops, "precisions", (DEFAULT,)):
        raise EngineError(
            f"precision {precision} is a setting of the numpy backend's CPU kernels; the {ops.name} "
            f"backend computes in {DEFAULT} only (use backend numpy, or precision {DEFAULT})"
        )
    missing = ops.precision_missing(precision) if hasattr(ops, "precision_missing") else None
    if missing:
        raise EngineError(f"precision {precision} needs {missing}: use precision {DEFAULT}")


def apply(precision: str, ops: ModuleType, matrices: list[Any], name: str) -> None:
    """After loading: switch the matrices the setting applies to; EngineError if there are none."""
    if precision == DEFAULT:
        return
    if ops.use_precision(matrices, precision) == 0:
        held = ", ".join(f"{fmt} {size / 1e9:.2f} GB" for fmt, size in weight_summary(matrices).items())
        raise EngineError(
            f"precision {precision} applies to {APPLIES_TO[precision]}; {name} has none ({held}): "
            f"use precision {DEFAULT}"
        )
