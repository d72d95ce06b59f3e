"""The numpy backend's fused one-row products (kernels_fused.c): a decode step's linear layer together
with the RMSNorm before it, its bias, the SwiGLU after a stacked gate_up and a residual add, in one C
call instead of three or four. What they save is the Python around each call (a decode step made ~280
of them, ~3 ms of Python on Qwen3-0.6B); the arithmetic is that of the separate kernels."""

from __future__ import annotations

import ctypes

import numpy as np

from engine.backends import kernels, numpy_bf16, numpy_threads
from engine.backends.numpy_threads import address, lasting_address

_F32 = np.dtype(np.float32)


def _dense(a: np.ndarray) -> bool:
    return a.dtype == _F32 and a.flags.c_contiguous


def one_row(
    x: np.ndarray,
    w: object,
    b: np.ndarray | None,
    norm: tuple[np.ndarray, float] | None,
    residual: np.ndarray | None,
    half: int = 0,
) -> np.ndarray | None:
    """[swiglu](rms_norm(x) @ w.T + b) + residual for one row x [1, in] in one C call; None when this
    case has no fused kernel (the caller then composes the separate ops). `half` > 0: w is a stacked
    [gate; up] of 2 * half rows and the result is silu(gate) * up [1, half]."""
    lib = kernels.load()
    if lib is not _typed:
        if lib is None:
            return None
        _set_restype(lib)
    if x.ndim != 2 or x.shape[0] != 1 or not _dense(x):
        return None
    if isinstance(w, numpy_bf16.Bf16Weight):
        matrix, bf16 = w.bits, 1
    elif isinstance(w, np.ndarray) and _dense(w):
        matrix, bf16 = w, 0
    else:
        return None
    rows, cols = matrix.shape
    n = half or rows
    if (b is not None and not _dense(b)) or (norm is not None and not _dense(norm[0])):
        return None
    if residual is not None and not (_dense(residual) and residual.size == n):
        return None
    y = np.empty((1, n), dtype=np.float32)
    norm_w, eps = (None, 0.0) if norm is None else (lasting_address(norm[0]), norm[1])
    failed = lib.gemv_fused(
        lasting_address(matrix), bf16, address(x), address(y), rows, cols, numpy_threads.DECODE_THREADS,
        norm_w, eps, None if b is None else lasting_address(b),
        None if residual is None else address(residual), half,
    )  # fmt: skip
    if failed:
        raise MemoryError(f"gemv_fused: no memory for a scratch row of {cols + rows} floats")
    return y


_typed: object = None  # the library whose gemv_fused was told it returns int64 (kernels.load sets None)


def _set_restype(lib: ctypes.CDLL) -> None:
    global _typed
    lib.gemv_fused.restype = ctypes.c_int64
    _typed = lib
