"""The numpy backend's scaled dot-product attention: decode in C over the KV cache, prefill in causal row
blocks, each core on its own kv heads when BLAS can be held to one thread (blas_threads).

Keys and values come as arrays or as a paged cache's `PagedLayer`s (engine.pages): decode then reads the
pages in place (kernels_paged.c, the same arithmetic as over contiguous rows, so the same bits); prefill
gathers them into a reused contiguous scratch first, since its BLAS products need one (a copy of the
history per layer and chunk, at memory speed: small beside the products themselves)."""

from __future__ import annotations

import threading

import numpy as np

from engine.backends import blas_threads, kernels, numpy_threads
from engine.backends.numpy_threads import address, dense_f32, parallel, row_blocks
from engine.pages import PagedLayer

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


def sdpa(
    q: np.ndarray, k: np.ndarray | PagedLayer, v: np.ndarray | PagedLayer, scale: float, causal_offset: int
) -> np.ndarray:
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
    if isinstance(k, PagedLayer) or isinstance(v, PagedLayer):
        return _paged(q, k, v, scale, causal_offset)
    h, t, d = q.shape
    hkv, s, _ = k.shape
    g = h // hkv
    decode = t == 1 and causal_offset + 1 == s  # one query sees every key: no mask, no blocks
    lib = kernels.load()
    if decode and lib is not None and dense_f32(q) and _kv_rows(k, d) and v.strides == k.strides:
        out = np.empty((h, 1, d), dtype=np.float32)  # in C, on DECODE_THREADS cores (kernels.c)
        args = (address(q), address(k), address(v), address(out))
        scratch = address(_scores_buffer(h * s))
        lib.attend_one(*args, scratch, h, hkv, s, d, k.strides[0] // 4, scale, numpy_threads.DECODE_THREADS)
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
    if numpy_threads.WORKERS < 2 or hkv < 2 or t * s < HEAD_PARALLEL_MIN or not blas_threads.available():
        rows = max(16, min(ATTENTION_ROWS, t, SCORES_BUDGET_BYTES // (4 * h * s)))
        _causal_blocks(qg, k, v, out, causal_offset, rows, threads=True)
        return out.reshape(h, t, d)

    def one_head(head: int) -> None:
        kv = slice(head, head + 1)
        rows = max(16, min(HEAD_ROWS, t, SCORES_BUDGET_BYTES // (4 * g * s)))
        _causal_blocks(qg[kv], k[kv], v[kv], out[kv], causal_offset, rows, threads=False)

    with blas_threads.single_threaded():
        parallel(one_head, list(range(hkv)))
    return out.reshape(h, t, d)


# Decode over pages of each dtype (kernels_paged.c): float16 pages are widened as they are read.
_PAGED_DECODE = {np.dtype(np.float32): "attend_paged", np.dtype(np.float16): "attend_paged_f16"}


def _paged(q: np.ndarray, k: PagedLayer, v: PagedLayer, scale: float, causal_offset: int) -> np.ndarray:
    """sdpa over a page table: one new position in C over the pages in place, else on the gathered rows
    (float32: float16 pages are widened, exactly, so either way the arithmetic is float32's)."""
    if not (isinstance(k, PagedLayer) and isinstance(v, PagedLayer) and k.table is v.table and k.side == 0):
        raise TypeError("paged attention takes the keys and values PagedLayers of one cache layer")
    h, t, d = q.shape
    s = k.length
    lib = kernels.load()
    kernel = _PAGED_DECODE.get(k.dtype) if d <= 256 else None  # float16 rows widen into a [256] buffer
    if t == 1 and causal_offset + 1 == s and lib is not None and dense_f32(q) and kernel is not None:
        out = np.empty((h, 1, d), dtype=np.float32)
        tb = k.table
        table = tb.addresses
        scratch = address(_scores_buffer(h * s))
        shape = (h, k.kv_heads, s, d)
        getattr(lib, kernel)(address(q), *table, len(tb.pages), k.layer, address(out), scratch, *shape, scale,
                             numpy_threads.DECODE_THREADS)  # fmt: skip
        return out
    keys, values = k.gather()
    return sdpa(q, keys, values, scale, causal_offset)


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
    blocks = row_blocks(scores) if threads else [slice(0, hkv)]
    lib = kernels.load()
    if lib is not None:  # mask, max, exp and sums in two passes over cache-sized column chunks
        sums = np.empty((hkv, g * t), dtype=np.float32)
        args = (address(scores), address(sums))
        shape = (visible, g * t, t, causal_offset)
        parallel(lambda heads: lib.softmax_keys(*args, heads.start, heads.stop, *shape), blocks)
        sums = sums[..., None]
    else:
        first_maskable = causal_offset + 1
        if first_maskable < visible:  # only these keys lie in some query's future
            future = (
                np.arange(first_maskable, visible)[:, None] > (causal_offset + np.arange(t))[None, :]
            )  # [S', T]
            block = scores.reshape(hkv, visible, g, t)[:, first_maskable:]
            block += np.where(future, np.float32(-np.inf), np.float32(0.0))[:, None, :]
        sums = np.concatenate(parallel(lambda heads: _softmax_keys(scores[heads]), blocks))
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
