"""numpy backend: float32 everywhere, matmuls through numpy's BLAS (OpenBLAS on Linux wheels).

Linear weights are stored pre-transposed and contiguous ([in, out]) by `linear_weight`, so `x @ wt`
reads them in the order BLAS wants, with no per-call transpose. Raw [out, in] arrays also work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

name = "numpy"
float_dtype = "float32"
Array = np.ndarray


@dataclass(frozen=True)
class LinearWeight:
    """A linear layer's weight, stored transposed ([in, out], C-contiguous)."""

    wt: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return (self.wt.shape[1], self.wt.shape[0])


def asarray(a: Any, dtype: str | None = None) -> np.ndarray:
    """A contiguous numpy array; floats become float32 unless `dtype` says otherwise."""
    arr = np.asarray(a)
    if dtype is None and arr.dtype.kind == "f":
        dtype = "float32"
    return np.ascontiguousarray(arr, dtype=dtype)


def to_numpy(x: Any) -> np.ndarray:
    arr = np.asarray(x)
    return arr.astype(np.float32, copy=False) if arr.dtype.kind == "f" else arr


def linear_weight(w: np.ndarray) -> LinearWeight:
    """Prepare a [out, in] weight for `linear`: transposed once here instead of on every call."""
    return LinearWeight(np.ascontiguousarray(np.asarray(w, dtype=np.float32).T))


def linear(x: np.ndarray, w: LinearWeight | np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """x @ w.T (+ b). `w` is a LinearWeight or a raw [out, in] array (e.g. a tied embedding table)."""
    y = x @ w.wt if isinstance(w, LinearWeight) else x @ w.T
    if b is not None:
        y += b
    return y


def embedding(table: np.ndarray, ids: Any) -> np.ndarray:
    return table[np.asarray(ids, dtype=np.int64)]


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    # Same order of operations as HF's Qwen/Llama RMSNorm in float32.
    variance = np.mean(np.square(x), axis=-1, keepdims=True)
    variance += eps
    y = x * (1.0 / np.sqrt(variance))
    y *= w
    return y


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mean = np.mean(x, axis=-1, keepdims=True)
    centered = x - mean
    variance = np.mean(np.square(centered), axis=-1, keepdims=True)
    y = centered / np.sqrt(variance + eps)
    y *= w
    y += b
    return y


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def silu_mul(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """silu(gate) * up with one temporary: the SwiGLU MLP's activation."""
    y = np.negative(gate)
    np.exp(y, out=y)
    y += 1.0
    np.divide(gate, y, out=y)
    y *= up
    return y


def _erf(x: np.ndarray) -> np.ndarray:
    # Abramowitz & Stegun 7.1.26: |error| < 1.5e-7, below float32 resolution of the result.
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-a * a))


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, as BERT uses."""
    return (0.5 * x * (1.0 + _erf(x * np.float32(1.0 / np.sqrt(2.0))))).astype(np.float32, copy=False)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    y = x - np.max(x, axis=axis, keepdims=True)
    np.exp(y, out=y)
    y /= np.sum(y, axis=axis, keepdims=True)
    return y


def rope(x: np.ndarray, offset: int, inv_freq: np.ndarray) -> np.ndarray:
    """Rotary embedding of x [H, T, D] at positions offset..offset+T-1 (HF rotate-half convention)."""
    t, d = x.shape[-2], x.shape[-1]
    half = d // 2
    angles = np.arange(offset, offset + t, dtype=np.float32)[:, None] * inv_freq[None, :]  # [T, D/2]
    cos = np.cos(angles)
    sin = np.sin(angles)
    x1 = x[..., :half]
    x2 = x[..., half:]
    out = np.empty(x.shape, dtype=np.float32)
    np.multiply(x1, cos, out=out[..., :half])
    out[..., :half] -= x2 * sin
    np.multiply(x2, cos, out=out[..., half:])
    out[..., half:] += x1 * sin
    return out


def sdpa(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, causal_offset: int) -> np.ndarray:
    """Causal attention. q [H, T, D]; k, v [Hkv, S, D]; query t sees keys 0..causal_offset+t.

    Grouped-query heads are folded into the row dimension (q head h uses kv head h // G, as HF's
    repeat_kv does), so k and v are never repeated in memory.
    """
    h, t, d = q.shape
    hkv, s, _ = k.shape
    g = h // hkv
    qg = q.reshape(hkv, g * t, d)
    scores = np.matmul(qg, k.transpose(0, 2, 1))  # [Hkv, G*T, S]
    scores *= np.float32(scale)
    if t > 1 or causal_offset + t < s:
        # Additive mask broadcast over heads: far cheaper than boolean-index assignment.
        future = np.arange(s)[None, :] > (causal_offset + np.arange(t))[:, None]  # [T, S]
        mask = np.where(future, np.float32(-np.inf), np.float32(0.0))
        scores4 = scores.reshape(hkv, g, t, s)
        np.add(scores4, mask, out=scores4)
    scores -= np.max(scores, axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= np.sum(scores, axis=-1, keepdims=True)
    out = np.matmul(scores, v)  # [Hkv, G*T, D]
    return out.reshape(h, t, d)


def empty(shape: tuple[int, ...], dtype: str | None = None) -> np.ndarray:
    return np.zeros(shape, dtype=dtype or "float32")


def concatenate(arrays: list[np.ndarray], axis: int = 0) -> np.ndarray:
    return np.concatenate(arrays, axis=axis)


def eval(*arrays: Any) -> None:
    """numpy computes eagerly: nothing to do (mlx evaluates its lazy graph here)."""
