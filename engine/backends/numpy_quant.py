"""MLX-quantized weights on the numpy backend: kept packed, as the checkpoint has them.

An MLX 4-bit checkpoint dequantized to float32 at load is 6-7x the bytes, and a decode step streams every
weight once per token. Kept packed (uint32 words + per-group scales and biases, kernels_quant.c):
- one row (decode): `gemv_quant` widens the packed values in registers, on DECODE_THREADS cores;
- more rows (prefill): blocks of rows are dequantized into a reused float32 buffer and go to BLAS, as
  numpy_bf16 does with bfloat16 (the matmuls are compute-bound there);
- token lookups dequantize only the rows they read.

Products are exact float arithmetic on the dequantized values, so logits equal the dequantized twin's to
float32 rounding. The opt-in precision "int8" (`QuantWeight.int8_activations`, set by the loader) instead
quantizes a decode step's activation vector to int8 per block of 32 and multiplies in integers
(kernels_q8act.c, as llama.cpp's Q8_0/Q4_0 do): faster, and no longer exact; prefill stays exact.

Used only when the C loops are built (`weight` returns None otherwise, and the loader dequantizes once,
as before): dequantizing in plain numpy on every step would cost far more than it saves.
"""

from __future__ import annotations

import threading

import numpy as np

from engine.backends import kernels, numpy_threads
from engine.backends.numpy_threads import address, dense_f32, lasting_address, over_rows

DEQUANT_BLOCK_BYTES = 32 << 20  # float32 bytes of a weight dequantized at once for BLAS (as numpy_bf16)
SCALE_KINDS = {np.dtype(np.float32): 0, np.dtype(np.float16): 1, np.dtype(np.uint16): 2}  # uint16: bf16
BITS = (4, 8)  # what kernels_quant.c computes with; others are dequantized at load
GROUPS = (32, 64, 128)

_scratch = threading.local()


class QuantWeight:
    """A [out, in] affine-quantized weight in mlx's layout: `packed` uint32 [out, in * bits / 32];
    `scales`, `biases` [out, in / group_size] as float32, float16, or bfloat16 bits (uint16)."""

    def __init__(
        self, packed: np.ndarray, scales: np.ndarray, biases: np.ndarray, group_size: int, bits: int
    ) -> None:
        if bits not in BITS or group_size not in GROUPS:
            raise ValueError(f"quantized weights need bits in {BITS} and group size in {GROUPS}")
        if packed.dtype != np.uint32 or packed.ndim != 2 or not packed.flags.c_contiguous:
            raise ValueError(f"packed weight must be C-contiguous uint32 [out, words], not {packed.dtype}")
        rows, cols = packed.shape[0], packed.shape[1] * 32 // bits
        groups = (rows, cols // group_size)
        for name, part in (("scales", scales), ("biases", biases)):
            if part.shape != groups or part.dtype not in SCALE_KINDS or not part.flags.c_contiguous:
                raise ValueError(f"{name} must be C-contiguous float32/float16/bf16 {list(groups)}")
        if scales.dtype != biases.dtype:
            raise ValueError(f"scales ({scales.dtype}) and biases ({biases.dtype}) differ in dtype")
        self.packed, self.scales, self.biases = packed, scales, biases
        self.group_size, self.bits = group_size, bits
        self.kind = SCALE_KINDS[scales.dtype]
        self.int8_activations = False  # precision "int8": decode products with x quantized (gemv_q8act)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.packed.shape[0], self.packed.shape[1] * 32 // self.bits)

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + self.scales.nbytes + self.biases.nbytes

    def __repr__(self) -> str:
        return f"QuantWeight{list(self.shape)}(q{self.bits} g{self.group_size})"

    def rows(self, ids: np.ndarray) -> QuantWeight:
        """The rows `ids` as a quantized weight of their own (embedding lookups)."""
        return QuantWeight(self.packed[ids], self.scales[ids], self.biases[ids], self.group_size, self.bits)

    def dequantize(self, r0: int = 0, r1: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """float32 of rows [r0, r1) (all by default), into `out` when given; on the thread pool."""
        lib = kernels.load()
        assert lib is not None  # QuantWeights exist only when the C loops are built (`weight`)
        r1 = self.shape[0] if r1 is None else r1
        cols = self.shape[1]
        if out is None:
            out = np.empty((r1 - r0, cols), dtype=np.float32)
        args = (address(self.packed), address(self.scales), address(self.biases), self.kind, address(out))
        rest = (cols, self.group_size, self.bits)
        over_rows(
            lambda a, b: lib.dequant_rows(*args[:4], args[4] + 4 * a * cols, r0 + a, r0 + b, *rest), out
        )
        return out


def weight(
    packed: np.ndarray, scales: np.ndarray, biases: np.ndarray, group_size: int, bits: int
) -> QuantWeight | None:
    """The parts kept as a packed weight, or None where the loader should dequantize (no C loops, or bits
    or a group size kernels_quant.c does not compute with)."""
    if kernels.load() is None or bits not in BITS or group_size not in GROUPS:
        return None
    contiguous = [np.ascontiguousarray(p) for p in (packed, scales, biases)]
    return QuantWeight(*contiguous, group_size, bits)


def linear(x: np.ndarray, w: QuantWeight) -> np.ndarray:
    """x @ w.T for x [..., in]: in C for one row, else through BLAS on dequantized blocks of w."""
    lib = kernels.load()
    assert lib is not None
    rows, cols = w.shape
    if x.ndim == 2 and x.shape[0] == 1 and dense_f32(x):
        y = np.empty((1, rows), dtype=np.float32)
        gemv(w, x, y)
        return y
    flat = x.reshape(-1, cols)
    y = np.empty((flat.shape[0], rows), dtype=np.float32)
    step = max(1, min(rows, DEQUANT_BLOCK_BYTES // (4 * cols)))
    buffer = _dequant_buffer(step * cols)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        block = w.dequantize(r0, r1, buffer[: (r1 - r0) * cols].reshape(r1 - r0, cols))
        np.matmul(flat, block.T, out=y[:, r0:r1])
    return y.reshape(*x.shape[:-1], rows)


def gemv(w: QuantWeight, x: np.ndarray, y: np.ndarray, portable: bool = False) -> None:
    """y [1, out] = x [1, in] @ w.T in kernels_quant.c, or with w.int8_activations in kernels_q8act.c;
    `portable` forces their plain C loop (tests)."""
    lib = kernels.load()
    assert lib is not None
    rows, cols = w.shape
    kernel = lib.gemv_q8act if w.int8_activations else lib.gemv_quant
    kernel(
        lasting_address(w.packed),
        lasting_address(w.scales),
        lasting_address(w.biases),
        w.kind,
        address(x),
        address(y),
        rows,
        cols,
        w.group_size,
        w.bits,
        numpy_threads.DECODE_THREADS,
        int(portable),
    )


def embedding(table: QuantWeight, ids: np.ndarray) -> np.ndarray:
    """Rows `ids` of the table, dequantized to float32."""
    return table.rows(ids).dequantize()


def _dequant_buffer(n: int) -> np.ndarray:
    """A per-thread float32 buffer of at least n elements, kept between calls (see numpy_bf16)."""
    buf = getattr(_scratch, "dequantized", None)
    if buf is None or buf.size < n:
        buf = np.empty(n, dtype=np.float32)
        _scratch.dequantized = buf
    return buf
