"""The numpy backend's threads and what its C calls need, shared by numpy_backend and numpy_attention.

- A small Python thread pool for prefill-sized elementwise work: numpy runs a ufunc (or a ctypes call)
  on one core but releases the GIL inside, so row blocks on several threads use every core.
- DECODE_THREADS: how many cores kernels.c's own pool splits a decode step's work over.
- Addresses and layout checks for passing arrays to kernels.c.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

_pool: ThreadPoolExecutor | None = None
WORKERS = min(4, os.cpu_count() or 1)
PARALLEL_MIN_ELEMENTS = 1 << 19  # below this, a thread hand-off costs more than it saves


def row_blocks(x: np.ndarray) -> list[slice]:
    """Blocks of x's first axis, one per core, for elementwise work big enough to be worth splitting.

    numpy runs ufuncs on one core but releases the GIL inside their loops, so threads give the
    elementwise parts of prefill (softmax, SwiGLU, rope) the cores BLAS uses for the matmuls."""
    n = x.shape[0]
    if x.size < PARALLEL_MIN_ELEMENTS or WORKERS < 2 or n < 2:
        return [slice(0, n)]
    step = -(-n // WORKERS)
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


def parallel(fn: Callable[[Any], Any], blocks: list[Any]) -> list[Any]:
    global _pool
    if len(blocks) == 1:
        return [fn(blocks[0])]
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="numpy-ops")
    return list(_pool.map(fn, blocks))


def over_rows(call: Callable[[int, int], Any], x: np.ndarray) -> None:
    """call(r0, r1) over ranges of x's first axis: at once for small inputs (a decode step: not even
    building the blocks), else in row_blocks on the pool. For the C loops, which take a row range."""
    if x.size < PARALLEL_MIN_ELEMENTS:
        call(0, x.shape[0])
    else:
        parallel(lambda rows: call(rows.start, rows.stop), row_blocks(x))


DECODE_THREADS = min(8, os.cpu_count() or 1)  # matrix-vector products stop scaling with cores before


def address(a: np.ndarray) -> int:
    """Address of a's first element, for the C loops (`a.ctypes.data` costs ~2 us, this ~1.4)."""
    return a.__array_interface__["data"][0]


lasting: dict[int, tuple[weakref.ref, int]] = {}


def lasting_address(a: np.ndarray) -> int:
    """`address` for arrays that live long and are passed often (weights, rope tables): remembered
    while the array lives. A decode step passes ~450 of them."""
    key = id(a)
    hit = lasting.get(key)
    if hit is not None and hit[0]() is a:
        return hit[1]
    where = address(a)
    lasting[key] = (weakref.ref(a, lambda _, key=key: lasting.pop(key, None)), where)
    return where


def dense_f32(a: np.ndarray) -> bool:
    return a.dtype == np.float32 and a.flags.c_contiguous


def f32_rows(x: np.ndarray) -> bool:
    """float32 with contiguous last axis and non-negative strides that are whole elements ("aligned"):
    what the C loops index."""
    return x.dtype == _F32 and x.strides[-1] == 4 and x.flags.aligned and min(x.strides) >= 0


_F32 = np.dtype(np.float32)
