"""numpy backend: float32 everywhere, matmuls through numpy's BLAS (OpenBLAS on Linux wheels).

Linear weights are float32 and C-contiguous (`linear_weight`). The elementwise parts of a prefill
(rms_norm, rope, SwiGLU, the causal softmax) run as one-pass C loops from `kernels` when they could be
built, else as plain numpy; either way in row blocks on a small thread pool, since one call uses one core.
A decode step's matrix-vector products and its attention over the KV cache run in C on all cores
(kernels.c has its own pool for them); prefill attention spreads its kv heads over the cores.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from engine.backends import blas_threads, kernels

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


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """x @ w.T (+ b) for a [out, in] weight. One row (decode): the C loops' matrix-vector product on
    DECODE_THREADS cores, as fast as OpenBLAS's and without waking its threads (see kernels.c)."""
    lib = kernels.load()
    if lib is not None and x.shape[0] == 1 and x.ndim == 2 and _dense_f32(x) and _dense_f32(w):
        y = np.empty((1, w.shape[0]), dtype=np.float32)
        lib.gemv(_lasting_address(w), _address(x), _address(y), w.shape[0], w.shape[1], DECODE_THREADS)
    else:
        y = x @ w.T
    if b is not None:
        y += b
    return y


DECODE_THREADS = min(8, os.cpu_count() or 1)  # matrix-vector products stop scaling with cores before


def _address(a: np.ndarray) -> int:
    """Address of a's first element, for the C loops (`a.ctypes.data` costs ~2 us, this ~1.4)."""
    return a.__array_interface__["data"][0]


_lasting: dict[int, tuple[weakref.ref, int]] = {}


def _lasting_address(a: np.ndarray) -> int:
    """_address for arrays that live long and are passed often (weights, rope tables): remembered
    while the array lives. A decode step passes ~450 of them."""
    key = id(a)
    hit = _lasting.get(key)
    if hit is not None and hit[0]() is a:
        return hit[1]
    address = _address(a)
    _lasting[key] = (weakref.ref(a, lambda _, key=key: _lasting.pop(key, None)), address)
    return address


def _dense_f32(a: np.ndarray) -> bool:
    return a.dtype == np.float32 and a.flags.c_contiguous


def embedding(table: np.ndarray, ids: Any) -> np.ndarray:
    return table[np.asarray(ids, dtype=np.int64)]


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """HF's Qwen/Llama RMSNorm in float32: x / sqrt(mean(x^2) + eps) * w over the last axis; prefill-sized
    inputs in row blocks on the thread pool."""
    out = np.empty(x.shape, dtype=np.float32)
    lib = kernels.load()
    if lib is not None and (x.ndim == 2 or x.ndim == 3) and _f32_rows(x) and _f32_rows(w):
        # one pass in C; rows (t, h) of a [T, H, D] view such as q inside the fused qkv output
        three = x.ndim == 3
        args = (_address(x), _lasting_address(w), _address(out))
        rest = (
            x.shape[1] if three else 1,
            x.shape[-1],
            x.strides[0] // 4,
            x.strides[1] // 4 if three else 0,
            eps,
        )
        if x.size < PARALLEL_MIN_ELEMENTS:  # decode: no thread hand-off
            lib.rms_norm(*args, 0, x.shape[0], *rest)
        else:
            _parallel(lambda rows: lib.rms_norm(*args, rows.start, rows.stop, *rest), _row_blocks(x))
        return out
    blocks = _row_blocks(x)
    if len(blocks) == 1:
        _rms_norm_into(x, w, eps, out)
    else:
        _parallel(lambda rows: _rms_norm_into(x[rows], w, eps, out[rows]), blocks)
    return out


def _f32_rows(x: np.ndarray) -> bool:
    """float32 with contiguous last axis and non-negative strides that are whole elements ("aligned"):
    what the C loops index."""
    return x.dtype == _F32 and x.strides[-1] == 4 and x.flags.aligned and min(x.strides) >= 0


_F32 = np.dtype(np.float32)


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
        and _f32_rows(gate)
        and up.strides == gate.strides
        and _address(up) == _address(gate) + 4 * gate.shape[1]
    ):  # the two halves of one [T, 2I] gate_up output: one pass in C
        ld, width = gate.strides[0] // 4, gate.shape[1]
        args = (_address(gate), _address(out))
        if gate.size < PARALLEL_MIN_ELEMENTS:  # decode: no thread hand-off
            lib.silu_mul(*args, 0, gate.shape[0], width, ld)
        else:
            _parallel(lambda rows: lib.silu_mul(*args, rows.start, rows.stop, width, ld), _row_blocks(gate))
        return out

    def work(rows: slice) -> None:
        y = out[rows]
        np.negative(gate[rows], out=y)
        np.exp(y, out=y)
        y += 1.0
        np.divide(gate[rows], y, out=y)
        y *= up[rows]

    _parallel(work, _row_blocks(gate))
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
        and _f32_rows(x)
        and cos.flags.c_contiguous
        and sin.flags.c_contiguous
        and (norm is None or _dense_f32(norm))
    ):  # one pass in C, normalising on the way, reading x through its strides (q, k: transposed views)
        ldh, ldt = x.strides[0] // 4, x.strides[1] // 4
        args = (_address(x), _lasting_address(cos), _lasting_address(sin), _address(out))
        rest = (t, d, ldh, ldt, None if norm is None else _lasting_address(norm), eps)
        if x.size < PARALLEL_MIN_ELEMENTS:  # decode: no thread hand-off
            lib.rope(*args, 0, x.shape[0], *rest)
        else:
            _parallel(lambda heads: lib.rope(*args, heads.start, heads.stop, *rest), _row_blocks(x))
        return out
    if norm is not None:
        x = rms_norm(x, norm, eps)

    def work(heads: slice) -> None:
        x1, x2 = x[heads, :, :half], x[heads, :, half:]
        np.multiply(x1, cos, out=out[heads, :, :half])
        out[heads, :, :half] -= x2 * sin
        np.multiply(x2, cos, out=out[heads, :, half:])
        out[heads, :, half:] += x1 * sin

    _parallel(work, _row_blocks(x))
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


SCORES_BUDGET_BYTES = 128 << 20  # attention scores held at once; bigger prefills go in row blocks
ATTENTION_ROWS = 256  # query rows per block: big enough for efficient matmuls, small enough to skip
# most of the causally masked keys
HEAD_ROWS = 128  # the same when each core takes its own heads: one head's scores [keys, G * rows]
# then stay in that core's L2 (2048 keys, G = 2: 2 MiB), between the product, the softmax and the next
HEAD_PARALLEL_MIN = 1 << 16  # queries x keys below this: one hand-off per head costs more than it saves
EXP_SHIFT_FREE = 60.0  # row maxima within +-this: exp(scores) needs no max subtraction (see _softmax_keys)

_scratch = threading.local()


def _scores_buffer(n: int) -> np.ndarray:
    """A per-thread float32 buffer of at least n elements, reused by every attention block.

    Allocating the scores afresh per block (tens of MiB) cost more than the q @ k matmul itself:
    fresh pages fault in on first write (measured 63 vs 164 GFLOP/s for the same product)."""
    buf = getattr(_scratch, "scores", None)
    if buf is None or buf.size < n:
        buf = np.empty(n, dtype=np.float32)
        _scratch.scores = buf
    return buf[:n]


def sdpa(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, causal_offset: int) -> np.ndarray:
    """Causal attention. q [H, T, D]; k, v [Hkv, S, D]; query t sees keys 0..causal_offset+t.

    Grouped-query heads are folded into the row dimension (q head h uses kv head h // G, as HF's
    repeat_kv does), so k and v are never repeated in memory. Long queries run in row blocks, each
    reading only the keys its rows can see: scores stay within SCORES_BUDGET_BYTES and the fully
    masked upper-right blocks are never computed.

    Prefills spread the kv heads over the cores, each running single-threaded BLAS on one head at a
    time, so that a head's scores stay in its core's cache from the product through the softmax to the
    product with v (measured ~25% faster at 2048 tokens than every product split over both cores;
    see blas_threads for when it is possible).
    """
    h, t, d = q.shape
    hkv, s, _ = k.shape
    g = h // hkv
    decode = t == 1 and causal_offset + 1 == s  # one query sees every key: no mask, no blocks
    lib = kernels.load()
    if decode and lib is not None and _dense_f32(q) and _kv_rows(k, d) and v.strides == k.strides:
        out = np.empty((h, 1, d), dtype=np.float32)  # in C, on DECODE_THREADS cores (kernels.c)
        args = (_address(q), _address(k), _address(v), _address(out))
        scratch = _address(_scores_buffer(h * s))
        lib.attend_one(*args, scratch, h, hkv, s, d, k.strides[0] // 4, scale, DECODE_THREADS)
        return out
    qg = np.multiply(q, np.float32(scale)).reshape(hkv, g, t, d)  # scale on q: smaller than on scores
    if decode:
        scores = np.matmul(qg.reshape(hkv, g, d), k.transpose(0, 2, 1))  # [Hkv, G, S]
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        out = np.matmul(scores, v)  # [Hkv, G, D]
        out /= scores.sum(axis=-1, keepdims=True)
        return out.reshape(h, 1, d)
    out = np.empty((hkv, g, t, d), dtype=np.float32)
    if _WORKERS < 2 or hkv < 2 or t * s < HEAD_PARALLEL_MIN or not blas_threads.available():
        rows = max(16, min(ATTENTION_ROWS, t, SCORES_BUDGET_BYTES // (4 * h * s)))
        _causal_blocks(qg, k, v, out, causal_offset, rows, threads=True)
        return out.reshape(h, t, d)

    def one_head(head: int) -> None:
        kv = slice(head, head + 1)
        rows = max(16, min(HEAD_ROWS, t, SCORES_BUDGET_BYTES // (4 * g * s)))
        _causal_blocks(qg[kv], k[kv], v[kv], out[kv], causal_offset, rows, threads=False)

    with blas_threads.single_threaded():
        _parallel(one_head, list(range(hkv)))
    return out.reshape(h, t, d)


def _kv_rows(k: np.ndarray, d: int) -> bool:
    """float32 [Hkv, S, D] with contiguous rows of D (a view of the first S positions of a cache)."""
    return k.dtype == np.float32 and k.strides[1:] == (4 * d, 4) and k.strides[0] % 4 == 0


def _causal_blocks(
    qg: np.ndarray, k: np.ndarray, v: np.ndarray, out: np.ndarray, offset: int, rows: int, threads: bool
) -> None:
    """out[:, :, r0:r1] = attention of query rows r0..r1 over the keys they see, block by block."""
    hkv, g, t, _ = qg.shape
    s = k.shape[1]
    scores = _scores_buffer(hkv * s * g * rows)
    for r0 in range(0, t, rows):
        r1 = min(t, r0 + rows)
        visible = min(s, offset + r1)
        out[:, :, r0:r1] = _attend(qg[:, :, r0:r1], k, v, offset + r0, visible, scores, threads)


def _attend(
    qg: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    causal_offset: int,
    visible: int,
    buffer: np.ndarray,
    threads: bool = True,
) -> np.ndarray:
    """qg [Hkv, G, T, D] (already scaled) against the first `visible` keys -> [Hkv, G, T, D].

    Scores are computed keys-major, k @ q.T -> [Hkv, S, G*T], into `buffer`: the softmax then reduces
    over axis 1, which numpy vectorises across the contiguous query axis. The normalisation divides
    the [.., D] output instead of the [.., S] probabilities. `threads`: the softmax may use the
    thread pool (not when the caller already runs on it).
    """
    hkv, g, t, d = qg.shape
    scores = buffer[: hkv * visible * g * t].reshape(hkv, visible, g * t)
    np.matmul(k[:, :visible], qg.reshape(hkv, g * t, d).transpose(0, 2, 1), out=scores)
    blocks = _row_blocks(scores) if threads else [slice(0, hkv)]
    lib = kernels.load()
    if lib is not None:  # mask, max, exp and sums in two passes over cache-sized column chunks
        sums = np.empty((hkv, g * t), dtype=np.float32)
        args = (_address(scores), _address(sums))
        shape = (visible, g * t, t, causal_offset)
        _parallel(lambda heads: lib.softmax_keys(*args, heads.start, heads.stop, *shape), blocks)
        sums = sums[..., None]
    else:
        first_maskable = causal_offset + 1
        if first_maskable < visible:  # only these keys lie in some query's future
            future = (
                np.arange(first_maskable, visible)[:, None] > (causal_offset + np.arange(t))[None, :]
            )  # [S', T]
            block = scores.reshape(hkv, visible, g, t)[:, first_maskable:]
            block += np.where(future, np.float32(-np.inf), np.float32(0.0))[:, None, :]
        sums = np.concatenate(_parallel(lambda heads: _softmax_keys(scores[heads]), blocks))
    out = np.matmul(scores.transpose(0, 2, 1), v[:, :visible])  # [Hkv, G*T, D]
    out /= sums
    return out.reshape(hkv, g, t, d)


def _softmax_keys(scores: np.ndarray) -> np.ndarray:
    """scores [Hkv, S, R] <- exp(scores - c), c constant per query; returns the sums over S [Hkv, R, 1].

    Any per-query c gives the same probabilities once divided by the sums; c = the row maximum keeps
    exp from overflowing. When every row maximum already lies within +-EXP_SHIFT_FREE, c = 0 is as
    safe (no term overflows, the sum of 40k terms stays finite, and terms lost to underflow weigh
    below e^-27 of the largest), and it saves a full pass over the scores."""
    peak = scores.max(axis=1)
    if float(peak.max()) < EXP_SHIFT_FREE and float(peak.min()) > -EXP_SHIFT_FREE:
        np.exp(scores, out=scores)
    else:
        scores -= peak[:, None, :]
        np.exp(scores, out=scores)
    return scores.sum(axis=1)[..., None]


_pool: ThreadPoolExecutor | None = None
_WORKERS = min(4, os.cpu_count() or 1)
PARALLEL_MIN_ELEMENTS = 1 << 19  # below this, a thread hand-off costs more than it saves


def _row_blocks(x: np.ndarray) -> list[slice]:
    """Blocks of x's first axis, one per core, for elementwise work big enough to be worth splitting.

    numpy runs ufuncs on one core but releases the GIL inside their loops, so threads give the
    elementwise parts of prefill (softmax, SwiGLU, rope) the cores BLAS uses for the matmuls."""
    n = x.shape[0]
    if x.size < PARALLEL_MIN_ELEMENTS or _WORKERS < 2 or n < 2:
        return [slice(0, n)]
    step = -(-n // _WORKERS)
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


def _parallel(fn: Callable[[Any], Any], blocks: list[Any]) -> list[Any]:
    global _pool
    if len(blocks) == 1:
        return [fn(blocks[0])]
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="numpy-ops")
    return list(_pool.map(fn, blocks))


def empty(shape: tuple[int, ...], dtype: str | None = None) -> np.ndarray:
    """Uninitialised storage for the KV cache, which only ever reads positions it wrote: zeroing a
    new 2 GB cache first (calloc over reused heap memory) would be one more full pass over it."""
    return np.empty(shape, dtype=dtype or "float32")


def concatenate(arrays: list[np.ndarray], axis: int = 0) -> np.ndarray:
    return np.concatenate(arrays, axis=axis)


def eval(*arrays: Any) -> None:
    """numpy computes eagerly: nothing to do (mlx evaluates its lazy graph here)."""
