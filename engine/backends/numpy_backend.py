"""numpy backend: float32 everywhere, matmuls through numpy's BLAS (OpenBLAS on Linux wheels).

Linear weights are float32 and C-contiguous (`linear_weight`), or, from bfloat16 checkpoints, the
checkpoint's own bits (`bf16_weight`, numpy_bf16.py: half the bytes for decode to stream), or, from
MLX-quantized checkpoints, the packed 4/8-bit words (`quantized_weight`, numpy_quant.py). The
elementwise parts of a prefill (rms_norm, rope, SwiGLU, the causal softmax) run as one-pass C loops from
`kernels` when they could be built, else as plain numpy; either way in row blocks on a small thread
pool, since one call uses one core.
A decode step's matrix-vector products run in C on all cores (kernels.c has its own pool for them).
Attention (`sdpa`) lives in numpy_attention.py; the thread pool and the C-call helpers both use are in
numpy_threads.py.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any

import numpy as np

from engine.backends import kernels, numpy_bf16, numpy_decode, numpy_quant, numpy_threads
from engine.backends.numpy_attention import sdpa as sdpa  # the backend's attention op (numpy_attention.py)
from engine.backends.numpy_threads import (
    address,
    dense_f32,
    f32_rows,
    lasting_address,
    over_rows,
    parallel,
    row_blocks,
)

name = "numpy"
float_dtype = "float32"
Array = np.ndarray

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # glibc malloc.h


def _tune_memory() -> None:
    """Make glibc reuse freed big blocks instead of handing them back to the OS; no huge pages.

    By default every array over 32 MiB (attention scores, MLP activations in prefill) is a fresh mmap,
    and touching it costs a page fault per 4 KiB: on virtual machines that is the single largest cost
    of a prefill (measured 5x slower allocation + first write of 64 MiB arrays). Keeping the memory in
    the heap makes repeated prefill steps reuse pages that are already mapped.

    One arena, too: a thread's own arena lives in 64 MiB heaps, so the KV-block reader threads (14 MiB
    blocks, a few in flight) kept mapping and unmapping fresh heaps; measured 3-6x slower restores.
    """
    if sys.platform != "linux":
        return
    # numpy asks for transparent huge pages on every array over 4 MiB; with THP in "madvise" mode
    # the first touch then compacts memory for 2 MiB pages, measured 4-6x slower than plain pages
    # here (0.3-0.5 vs 2.0 GB/s) for the weights at load and every new KV cache.
    set_madvise = getattr(getattr(np, "_core", None), "multiarray", None)
    if set_madvise is not None and hasattr(set_madvise, "_set_madvise_hugepage"):
        set_madvise._set_madvise_hugepage(False)
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
        libc.mallopt(_M_ARENA_MAX, 1)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


_tune_memory()


def asarray(a: Any, dtype: str | None = None) -> np.ndarray:
    """A contiguous numpy array; floats become float32 unless `dtype` says otherwise."""
    arr = np.asarray(a)
    if dtype is None and arr.dtype.kind == "f":
        dtype = "float32"
    return np.ascontiguousarray(arr, dtype=dtype)


def to_numpy(x: Any) -> np.ndarray:
    arr = np.asarray(x)
    return arr.astype(np.float32, copy=False) if arr.dtype.kind == "f" else arr


def linear_weight(w: np.ndarray) -> np.ndarray:
    """Prepare a [out, in] weight for `linear`: float32, C-contiguous (no copy if it already is).

    Kept in the checkpoint's [out, in] layout: OpenBLAS runs x @ w.T as fast as x @ w_transposed
    (measured both ways for prefill and decode), and loading then needs no transposed copy."""
    return np.ascontiguousarray(w, dtype=np.float32)


def bf16_weight(bits: np.ndarray) -> numpy_bf16.Bf16Weight | None:
    """A linear weight or embedding table kept as bfloat16 bits [out, in] (uint16), or None when this
    backend would rather have float32 (the C loops are not built)."""
    return numpy_bf16.weight(bits)


def quantized_weight(
    packed: np.ndarray, scales: np.ndarray, biases: np.ndarray, group_size: int, bits: int
) -> numpy_quant.QuantWeight | None:
    """An MLX-quantized linear weight or embedding table kept packed (numpy_quant.py), or None when this
    backend would rather have it dequantized to float32 (no C loops, or bits/group it has no kernel for)."""
    return numpy_quant.weight(packed, scales, biases, group_size, bits)


quantized_scales_raw = True  # quantized_weight takes float16 / bfloat16 (uint16) scales as the file has them
precisions = ("fp32", "int8", "bf16")  # engine/precision.py


def precision_missing(precision: str) -> str | None:
    """What this machine lacks for `precision`, or None: "bf16" needs the CPU's bfloat16 matrix unit."""
    if precision != "bf16":
        return None
    return numpy_bf16.matrix_unit_missing()


def use_precision(matrices: list, precision: str) -> int:
    """Compute with `precision` where it applies; how many matrices it applies to. "int8": decode
    products of the packed quantized weights with int8 activations (numpy_quant.py); "bf16": prefill
    products of bfloat16 weights with bfloat16 activations (numpy_bf16.py)."""
    quantized = [w for w in matrices if isinstance(w, numpy_quant.QuantWeight)]
    bf16 = [w for w in matrices if isinstance(w, numpy_bf16.Bf16Weight)]
    for w in quantized:
        w.int8_activations = precision == "int8"
    for w in bf16:
        w.bf16_products = precision == "bf16"
    return len(quantized if precision == "int8" else bf16)


Weight = np.ndarray | numpy_bf16.Bf16Weight | numpy_quant.QuantWeight


Norm = tuple[np.ndarray, float]  # (RMSNorm weight, eps)


def linear(
    x: np.ndarray, w: Weight, b: np.ndarray | None = None, norm: Norm | None = None,
    residual: np.ndarray | None = None,
) -> np.ndarray:  # fmt: skip
    """rms_norm(x, *norm) @ w.T (+ b) (+ residual) for a [out, in] weight; `norm` and `residual` are
    optional. One row (decode): one C call for all of it (numpy_decode: the matrix-vector product on
    DECODE_THREADS cores, as fast as OpenBLAS's and without waking its threads, see kernels.c)."""
    y = numpy_decode.one_row(x, w, b, norm, residual)
    if y is not None:
        return y
    if norm is not None:
        x = rms_norm(x, *norm)
    y = _product(x, w)
    if b is not None:
        y += b
    if residual is not None:
        y += residual
    return y


def swiglu_linear(
    x: np.ndarray, w: Weight, b: np.ndarray | None = None, norm: Norm | None = None
) -> np.ndarray:
    """silu(gate) * up of z = linear(x, w, b, norm) for a stacked [gate; up] weight (2 I rows): [.., I]."""
    half = w.shape[0] // 2
    y = numpy_decode.one_row(x, w, b, norm, None, half)
    if y is not None:
        return y
    gate_up = linear(x, w, b, norm)
    return silu_mul(gate_up[:, :half], gate_up[:, half:])


def _product(x: np.ndarray, w: Weight) -> np.ndarray:
    lib = kernels.load()
    if isinstance(w, numpy_bf16.Bf16Weight):
        return numpy_bf16.linear(x, w)
    if isinstance(w, numpy_quant.QuantWeight):
        return numpy_quant.linear(x, w)
    if lib is not None and x.shape[0] == 1 and x.ndim == 2 and dense_f32(x) and dense_f32(w):
        y = np.empty((1, w.shape[0]), dtype=np.float32)
        rows, cols = w.shape
        lib.gemv(lasting_address(w), address(x), address(y), rows, cols, numpy_threads.DECODE_THREADS)
        return y
    return x @ w.T


def embedding(table: Weight, ids: Any) -> np.ndarray:
    rows = np.asarray(ids, dtype=np.int64)
    if isinstance(table, numpy_bf16.Bf16Weight):
        return numpy_bf16.embedding(table, rows)
    if isinstance(table, numpy_quant.QuantWeight):
        return numpy_quant.embedding(table, rows)
    return table[rows]


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """HF's Qwen/Llama RMSNorm in float32: x / sqrt(mean(x^2) + eps) * w over the last axis; prefill-sized
    inputs in row blocks on the thread pool."""
    out = np.empty(x.shape, dtype=np.float32)
    lib = kernels.load()
    if lib is not None and (x.ndim == 2 or x.ndim == 3) and f32_rows(x) and f32_rows(w):
        # one pass in C; rows (t, h) of a [T, H, D] view such as q inside the fused qkv output
        three = x.ndim == 3
        args = (address(x), lasting_address(w), address(out))
        rest = (
            x.shape[1] if three else 1,
            x.shape[-1],
            x.strides[0] // 4,
            x.strides[1] // 4 if three else 0,
            eps,
        )
        over_rows(lambda r0, r1: lib.rms_norm(*args, r0, r1, *rest), x)
        return out
    blocks = row_blocks(x)
    if len(blocks) == 1:
        _rms_norm_into(x, w, eps, out)
    else:
        parallel(lambda rows: _rms_norm_into(x[rows], w, eps, out[rows]), blocks)
    return out


def _rms_norm_into(x: np.ndarray, w: np.ndarray, eps: float, out: np.ndarray) -> None:
    # np.add.reduce, not np.mean: its Python wrapper is a visible cost in decode
    np.square(x, out=out)
    scale = np.add.reduce(out, axis=-1, keepdims=True)
    scale *= np.float32(1.0 / x.shape[-1])
    scale += np.float32(eps)
    np.sqrt(scale, out=scale)
    np.divide(np.float32(1.0), scale, out=scale)
    np.multiply(x, scale, out=out)
    out *= w


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
    """silu(gate) * up, the SwiGLU activation: one output array, row blocks on several threads."""
    out = np.empty(gate.shape, dtype=np.float32)
    lib = kernels.load()
    if (
        lib is not None
        and gate.ndim == 2
        and f32_rows(gate)
        and up.strides == gate.strides
        and address(up) == address(gate) + 4 * gate.shape[1]
    ):  # the two halves of one [T, 2I] gate_up output: one pass in C
        ld, width = gate.strides[0] // 4, gate.shape[1]
        args = (address(gate), address(out))
        over_rows(lambda r0, r1: lib.silu_mul(*args, r0, r1, width, ld), gate)
        return out

    def work(rows: slice) -> None:
        y = out[rows]
        np.negative(gate[rows], out=y)
        np.exp(y, out=y)
        y += 1.0
        np.divide(gate[rows], y, out=y)
        y *= up[rows]

    parallel(work, row_blocks(gate))
    return out


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


def rope(
    x: np.ndarray, offset: int, inv_freq: np.ndarray, norm: np.ndarray | None = None, eps: float = 0.0
) -> np.ndarray:
    """Rotary embedding of x [H, T, D] at positions offset..offset+T-1 (HF rotate-half convention).
    `norm`: RMSNorm weight [D] applied to each head vector first (Qwen3's q_norm and k_norm)."""
    t, d = x.shape[-2], x.shape[-1]
    half = d // 2
    cos, sin = _rope_table(offset, t, inv_freq)
    out = np.empty(x.shape, dtype=np.float32)
    lib = kernels.load()
    if (
        lib is not None
        and x.ndim == 3
        and f32_rows(x)
        and cos.flags.c_contiguous
        and sin.flags.c_contiguous
        and (norm is None or dense_f32(norm))
    ):  # one pass in C, normalising on the way, reading x through its strides (q, k: transposed views)
        ldh, ldt = x.strides[0] // 4, x.strides[1] // 4
        args = (address(x), lasting_address(cos), lasting_address(sin), address(out))
        rest = (t, d, ldh, ldt, None if norm is None else lasting_address(norm), eps)
        over_rows(lambda h0, h1: lib.rope(*args, h0, h1, *rest), x)
        return out
    if norm is not None:
        x = rms_norm(x, norm, eps)

    def work(heads: slice) -> None:
        x1, x2 = x[heads, :, :half], x[heads, :, half:]
        np.multiply(x1, cos, out=out[heads, :, :half])
        out[heads, :, :half] -= x2 * sin
        np.multiply(x2, cos, out=out[heads, :, half:])
        out[heads, :, half:] += x1 * sin

    parallel(work, row_blocks(x))
    return out


_rope_cache: tuple[Any, ...] = ()


def _rope_table(offset: int, t: int, inv_freq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [T, D/2] of positions offset..offset+T-1. Every layer's q and k use the same table in
    a forward pass, so the last one is kept (with inv_freq itself, so its id cannot be reused)."""
    global _rope_cache
    cached = _rope_cache  # one read: another thread may replace it
    if cached[:3] == (offset, t, id(inv_freq)):
        return cached[4], cached[5]
    angles = np.arange(offset, offset + t, dtype=np.float32)[:, None] * inv_freq[None, :]
    cos, sin = np.cos(angles), np.sin(angles)
    _rope_cache = (offset, t, id(inv_freq), inv_freq, cos, sin)
    return cos, sin


def empty(shape: tuple[int, ...], dtype: str | None = None) -> np.ndarray:
    """Uninitialised storage for the KV cache, which only ever reads positions it wrote: zeroing a
    new 2 GB cache first (calloc over reused heap memory) would be one more full pass over it."""
    return np.empty(shape, dtype=dtype or "float32")


def concatenate(arrays: list[np.ndarray], axis: int = 0) -> np.ndarray:
    return np.concatenate(arrays, axis=axis)


def eval(*arrays: Any) -> None:
    """numpy computes eagerly: nothing to do (mlx evaluates its lazy graph here)."""
