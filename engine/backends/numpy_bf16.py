"""bfloat16 weights on the numpy backend: kept as the checkpoint's own bits, widened where they are used.

Qwen, Llama and most checkpoints on the hub ship bfloat16. Widened once at load, their float32 copy is
twice the size, and a decode step streams every weight once per token: half the bytes is the largest
single speed-up a memory-bound decode can get (measured 1.6x for the matrix-vector products alone).

Widening is exact (a bfloat16 is the top half of a float32), so every product is the product with
float32 weights (up to the order of its float32 additions):
- one row (decode): kernels_matvec.c's `gemv_bf16` widens in registers;
- a few rows (a short prefill, e.g. the new tokens of a resumed turn): kernels_gemm.c's `gemm_bf16`
  reads each weight row once for all of them, widened in registers;
- more rows (prefill): blocks of the weight are widened into a reused float32 buffer and go to BLAS,
  whose matmuls are compute-bound there, so the widening costs a few percent;
- token lookups widen only the rows they read.

Precision "bf16" (engine/precision.py) sets `bf16_products` on every such weight: its products of more
than one row then round the rows to bfloat16 and run on the CPU's matrix unit (kernels_amx.c).

Used only when the C loops are built: widening in plain numpy would cost more than it saves.
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np

from engine.backends import kernels, numpy_threads
from engine.backends.numpy_threads import address, dense_f32, lasting_address, over_rows

WIDEN_BLOCK_BYTES = 32 << 20  # float32 bytes of a weight widened at once for BLAS: Qwen3-0.6B's largest
# layer matrix (gate_up, 25 MB) in one go; bigger ones and the output embedding in blocks of rows

GEMM_MAX_TOKENS = 96  # up to this many rows gemm_bf16 beats widening + BLAS (bench/bf16_gemm_bench.py:
# 0.42-0.56x its time at 16 rows, 0.68-0.89x at 64, 0.95x at 96, 1.26x at 128 on 2 cores)

_scratch = threading.local()


class Bf16Weight:
    """A [out, in] weight as bfloat16 bits (uint16, C-contiguous)."""

    def __init__(self, bits: np.ndarray) -> None:
        if bits.dtype != np.uint16 or bits.ndim != 2 or not bits.flags.c_contiguous:
            raise ValueError(
                f"bfloat16 weight bits must be C-contiguous uint16 [out, in], not {bits.dtype} {bits.shape}"
            )
        self.bits = bits
        self.bf16_products = False  # precision "bf16": products of several rows on the matrix unit

    @property
    def shape(self) -> tuple[int, int]:
        return self.bits.shape  # type: ignore[return-value]

    @property
    def nbytes(self) -> int:
        return self.bits.nbytes

    def __repr__(self) -> str:
        return f"Bf16Weight{list(self.shape)}"

    def widen(self, rows: slice = slice(None), out: np.ndarray | None = None) -> np.ndarray:
        """float32 of rows `rows` (all by default), into `out` when given."""
        return widen(self.bits[rows], out)


def widen(bits: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """float32 of C-contiguous bfloat16 bits [n, m], into `out` when given; in row blocks on the pool."""
    if out is None:
        out = np.empty(bits.shape, dtype=np.float32)
    lib = kernels.load()
    if lib is None:  # not reached by the backend (it keeps no bf16 weights without the C loops)
        np.left_shift(bits, 16, out=out.view(np.uint32), dtype=np.uint32)
        return out
    cols = bits.shape[-1]
    src, dst = address(bits), address(out)
    over_rows(lambda r0, r1: lib.widen_bf16(src, dst, r0 * cols, r1 * cols), bits.reshape(-1, cols))
    return out


def weight(bits: np.ndarray) -> Bf16Weight | None:
    """`bits` kept as a bfloat16 weight, or None where float32 is the better choice (no C loops)."""
    return Bf16Weight(np.ascontiguousarray(bits)) if kernels.load() is not None else None


def linear(x: np.ndarray, w: Bf16Weight) -> np.ndarray:
    """x @ w.T for x [..., in]: in C for one row and for up to GEMM_MAX_TOKENS rows (the weight read
    once, widened in registers), else through BLAS on widened blocks of w."""
    lib = kernels.load()
    rows, cols = w.shape
    if lib is not None and x.ndim == 2 and x.shape[0] == 1 and dense_f32(x):
        y = np.empty((1, rows), dtype=np.float32)
        threads = numpy_threads.DECODE_THREADS
        lib.gemv_bf16(lasting_address(w.bits), address(x), address(y), rows, cols, threads)
        return y
    flat = x.reshape(-1, cols)
    if w.bf16_products and lib is not None:
        y = matrix_unit_matmul(flat, w)
    elif lib is not None and flat.shape[0] <= GEMM_MAX_TOKENS:
        y = gemm(flat, w)
    else:
        y = widened_matmul(flat, w)
    return y.reshape(*x.shape[:-1], rows)


def matrix_unit_missing() -> str | None:
    """None when precision "bf16" can run here, else what is missing (for the error the loader raises)."""
    lib = kernels.load()
    if lib is None:
        return "the numpy backend's C kernels (engine.backends.kernels could not be built or loaded)"
    if not _typed_amx(lib).bf16_gemm_ready():
        return (
            "a CPU with a bfloat16 matrix unit (Intel AMX-BF16: Sapphire Rapids or later) whose tiles the "
            "kernel grants this process; this machine has none"
        )
    return None


def matrix_unit_matmul(x: np.ndarray, w: Bf16Weight) -> np.ndarray:
    """x [T, in] @ w.T with x rounded to bfloat16, on the matrix unit (kernels_amx.c), sums in float32."""
    lib = _typed_amx(kernels.load())
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, cols = w.shape
    y = np.empty((x.shape[0], rows), dtype=np.float32)
    failed = lib.gemm_bf16_amx(
        lasting_address(w.bits), address(x), address(y), x.shape[0], rows, cols, numpy_threads.DECODE_THREADS
    )
    if failed == 2:
        raise MemoryError(f"gemm_bf16_amx: no memory for {x.shape[0]} x {cols} bfloat16 activations")
    if failed:
        raise RuntimeError("gemm_bf16_amx: the kernel no longer grants this process the AMX tiles")
    return y


def rounded_reference(x: np.ndarray, w: Bf16Weight) -> np.ndarray:
    """The same product as matrix_unit_matmul, one float32 sum at a time in plain C (tests compare)."""
    lib = kernels.load()
    if lib is None:
        raise RuntimeError("gemm_bf16_rounded_reference needs the C kernels (engine.backends.kernels)")
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, cols = w.shape
    y = np.empty((x.shape[0], rows), dtype=np.float32)
    lib.gemm_bf16_rounded_reference(lasting_address(w.bits), address(x), address(y), x.shape[0], rows, cols)
    return y


def _typed_amx(lib: object) -> object:
    """`lib` with kernels_amx.c's int64 results declared (kernels.load declares every result void)."""
    if getattr(lib, "_amx_typed", False) is False:
        lib.bf16_gemm_ready.restype = ctypes.c_int64  # type: ignore[attr-defined]
        lib.gemm_bf16_amx.restype = ctypes.c_int64  # type: ignore[attr-defined]
        lib._amx_typed = True  # type: ignore[attr-defined]
    return lib


def gemm(x: np.ndarray, w: Bf16Weight, portable: bool = False) -> np.ndarray:
    """x [T, in] @ w.T by kernels_gemm.c's gemm_bf16 (C loops required); `portable` forces its plain C
    loop (tests compare it with the vector path)."""
    lib = kernels.load()
    if lib is None:
        raise RuntimeError("gemm_bf16 needs the C kernels (engine.backends.kernels)")
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, cols = w.shape
    y = np.empty((x.shape[0], rows), dtype=np.float32)
    shape = (x.shape[0], rows, cols, numpy_threads.DECODE_THREADS)
    lib.gemm_bf16(lasting_address(w.bits), address(x), address(y), *shape, int(portable))
    return y


def widened_matmul(x: np.ndarray, w: Bf16Weight) -> np.ndarray:
    """x [T, in] @ w.T through BLAS, w widened block by block into the reused float32 buffer."""
    rows, cols = w.shape
    y = np.empty((x.shape[0], rows), dtype=np.float32)
    step = max(1, min(rows, WIDEN_BLOCK_BYTES // (4 * cols)))
    buffer = _widen_buffer(step * cols)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        block = w.widen(slice(r0, r1), buffer[: (r1 - r0) * cols].reshape(r1 - r0, cols))
        np.matmul(x, block.T, out=y[:, r0:r1])
    return y


def embedding(table: Bf16Weight, ids: np.ndarray) -> np.ndarray:
    """Rows `ids` of the table, as float32."""
    return widen(table.bits[ids])


def _widen_buffer(n: int) -> np.ndarray:
    """A per-thread float32 buffer of at least n elements, kept: its pages stay mapped between calls
    (fresh pages fault in on first write, and this VM's host takes idle freed memory back)."""
    buf = getattr(_scratch, "widened", None)
    if buf is None or buf.size < n:
        buf = np.empty(n, dtype=np.float32)
        _scratch.widened = buf
    return buf
