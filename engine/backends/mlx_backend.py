"""mlx backend: mlx.fast kernels (rms_norm, rope, scaled_dot_product_attention), quantized matmuls.

Computes in float16 where mlx has a GPU and float32 on CPU-only machines (mlx's CPU float16 is slow and
its reference BLAS works in float32). Quantized weights stay quantized (`mx.quantized_matmul`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np

name = "mlx"
float_dtype = "float16" if mx.metal.is_available() else "float32"
Array = mx.array

_DTYPES = {
    "float32": mx.float32,
    "float16": mx.float16,
    "bfloat16": mx.bfloat16,
    "int32": mx.int32,
    "uint32": mx.uint32,
    "int64": mx.int64,
}


@dataclass(frozen=True)
class QuantizedWeight:
    """An affine-quantized [out, in] weight in mlx's layout: packed uint32 w, per-group scales/biases."""

    w: mx.array
    scales: mx.array
    biases: mx.array
    group_size: int
    bits: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.w.shape[0], self.w.shape[1] * 32 // self.bits)


def asarray(a: Any, dtype: str | None = None) -> mx.array:
    """An mx.array; float inputs become the backend's compute dtype unless `dtype` says otherwise."""
    arr = np.asarray(a)
    if dtype is None:
        dtype = float_dtype if arr.dtype.kind == "f" else None
    out = mx.array(arr)
    return out.astype(_DTYPES[dtype]) if dtype is not None else out


def to_numpy(x: mx.array) -> np.ndarray:
    if mx.issubdtype(x.dtype, mx.floating):
        x = x.astype(mx.float32)
    return np.array(x)


def linear_weight(w: np.ndarray) -> mx.array:
    return asarray(w)


def quantized_weight(
    w: np.ndarray, scales: np.ndarray, biases: np.ndarray, group_size: int, bits: int
) -> QuantizedWeight:
    return QuantizedWeight(mx.array(w), asarray(scales), asarray(biases), group_size, bits)


Norm = tuple[mx.array, float]  # (RMSNorm weight, eps)


def linear(
    x: mx.array, w: mx.array | QuantizedWeight, b: mx.array | None = None, norm: Norm | None = None,
    residual: mx.array | None = None,
) -> mx.array:  # fmt: skip
    """rms_norm(x, *norm) @ w.T (+ b) (+ residual); mlx fuses the graph itself, so these are plain ops."""
    if norm is not None:
        x = mx.fast.rms_norm(x, norm[0], norm[1])
    if isinstance(w, QuantizedWeight):
        y = mx.quantized_matmul(
            x, w.w, w.scales, w.biases, transpose=True, group_size=w.group_size, bits=w.bits
        )
    else:
        y = x @ w.T
    if b is not None:
        y = y + b
    return y + residual if residual is not None else y


def swiglu_linear(
    x: mx.array, w: mx.array | QuantizedWeight, b: mx.array | None = None, norm: Norm | None = None
) -> mx.array:
    """silu(gate) * up of z = linear(x, w, b, norm) for a stacked [gate; up] weight (2 I rows)."""
    half = w.shape[0] // 2
    gate_up = linear(x, w, b, norm)
    return silu_mul(gate_up[:, :half], gate_up[:, half:])


def embedding(table: mx.array | QuantizedWeight, ids: Any) -> mx.array:
    idx = mx.array(np.asarray(ids, dtype=np.int32))
    if isinstance(table, QuantizedWeight):
        return mx.dequantize(
            table.w[idx], table.scales[idx], table.biases[idx], group_size=table.group_size, bits=table.bits
        )
    return table[idx]


def rms_norm(x: mx.array, w: mx.array, eps: float) -> mx.array:
    return mx.fast.rms_norm(x, w, eps)


def layer_norm(x: mx.array, w: mx.array, b: mx.array, eps: float) -> mx.array:
    return mx.fast.layer_norm(x, w, b, eps)


def silu(x: mx.array) -> mx.array:
    return x * mx.sigmoid(x)


def silu_mul(gate: mx.array, up: mx.array) -> mx.array:
    return gate * mx.sigmoid(gate) * up


def gelu(x: mx.array) -> mx.array:
    return 0.5 * x * (1.0 + mx.erf(x * (1.0 / np.sqrt(2.0))))


def softmax(x: mx.array, axis: int = -1) -> mx.array:
    return mx.softmax(x, axis=axis, precise=True)


def rope(
    x: mx.array, offset: int, inv_freq: mx.array, norm: mx.array | None = None, eps: float = 0.0
) -> mx.array:
    """Rotary embedding of x [H, T, D], each head vector RMS-normalised by `norm` first if given;
    mx.fast.rope takes periods (1 / inv_freq) as `freqs`."""
    if norm is not None:
        x = mx.fast.rms_norm(x, norm, eps)
    return mx.fast.rope(
        x,
        x.shape[-1],
        traditional=False,
        base=None,
        scale=1.0,
        offset=offset,
        freqs=1.0 / inv_freq.astype(mx.float32),
    )


def sdpa(q: mx.array, k: mx.array, v: mx.array, scale: float, causal_offset: int) -> mx.array:
    """Causal attention. q [H, T, D]; k, v [Hkv, S, D]; grouped-query heads handled by mlx."""
    t, s = q.shape[1], k.shape[1]
    mask: str | mx.array | None = None
    if causal_offset == s - t:
        mask = "causal" if t > 1 else None
    else:
        visible = mx.arange(s)[None, :] <= (causal_offset + mx.arange(t))[:, None]
        mask = visible
    out = mx.fast.scaled_dot_product_attention(q[None], k[None], v[None], scale=scale, mask=mask)
    return out[0]


def empty(shape: tuple[int, ...], dtype: str | None = None) -> mx.array:
    return mx.zeros(shape, dtype=_DTYPES[dtype or float_dtype])


def concatenate(arrays: list[mx.array], axis: int = 0) -> mx.array:
    return mx.concatenate(arrays, axis=axis)


def eval(*arrays: Any) -> None:
    mx.eval(*arrays)
