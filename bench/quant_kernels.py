"""The quantized decode kernels alone, beside the machine's matrix-vector bandwidth, in one run.

    flock /tmp/workbench-bench.lock python -m bench.quant_kernels [--layers 8] [--threads 1,2]

Over a Qwen3-0.6B layer's four matrices (qkv 4096x1024, o 1024x2048, gate_up 6144x1024, down 1024x3072),
`--layers` copies of them (8: 126 M weights, far over the L3 cache, so every pass streams from memory),
one product per matrix per pass as a decode step does: the exact kernel (kernels_quant.c gemv_quant:
weights widened to float) and precision int8's (kernels_q8act.c gemv_q8act: int8 activations, integer
dot products), 8-bit and 4-bit, groups of 64, float16 scales; float32 (kernels.c gemv) for the
bandwidth. Printed: best-of time per pass as GB/s of weight bytes and G weights/s.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from engine.backends import kernels, numpy_quant
from engine.backends.numpy_threads import address

SHAPES = [(4096, 1024), (1024, 2048), (6144, 1024), (1024, 3072)]


def random_quant(
    rows: int, cols: int, bits: int, group: int, rng: np.random.Generator
) -> numpy_quant.QuantWeight:
    packed = rng.integers(0, 2**32, (rows, cols * bits // 32), dtype=np.uint32)
    scales = (rng.random((rows, cols // group), dtype=np.float32) * 0.01).astype(np.float16)
    biases = (rng.standard_normal((rows, cols // group), dtype=np.float32) * 0.01).astype(np.float16)
    weight = numpy_quant.weight(packed, scales, biases, group, bits)
    assert weight is not None
    return weight


def best(fn: Callable[[], None], repeat: int = 7) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def quant_pass(mats: list[numpy_quant.QuantWeight], kernel: Callable, threads: int) -> Callable[[], None]:
    calls = []
    for w in mats:
        rows, cols = w.shape
        x, y = np.ones((1, cols), np.float32), np.empty((1, rows), np.float32)
        parts = (address(w.packed), address(w.scales), address(w.biases), w.kind, address(x), address(y))
        calls.append((parts, (rows, cols, w.group_size, w.bits, threads, 0), x, y))

    def run() -> None:
        for parts, rest, _x, _y in calls:
            kernel(*parts, *rest)

    return run


def f32_pass(mats: list[np.ndarray], lib: object, threads: int) -> Callable[[], None]:
    xs = [np.ones((1, w.shape[1]), np.float32) for w in mats]
    ys = [np.empty((1, w.shape[0]), np.float32) for w in mats]

    def run() -> None:
        for w, x, y in zip(mats, xs, ys, strict=True):
            lib.gemv(address(w), address(x), address(y), w.shape[0], w.shape[1], threads)  # type: ignore[attr-defined]

    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()
    lib = kernels.load()
    if lib is None:
        raise SystemExit(
            "bench.quant_kernels: the C kernels are not built (python -m engine.backends.kernels)"
        )
    rng = np.random.default_rng(0)
    shapes = SHAPES * args.layers
    weights = sum(r * c for r, c in shapes)
    f32 = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
    quant = {bits: [random_quant(r, c, bits, 64, rng) for r, c in shapes] for bits in (8, 4)}
    print(
        f"{args.layers} layers of Qwen3-0.6B's matrices: {weights / 1e6:.0f} M weights, "
        "groups of 64, f16 scales"
    )
    print("| kernel | threads | ms / pass | GB/s | G weights/s |")
    print("|---|---|---|---|---|")
    for threads in map(int, args.threads.split(",")):
        rows = [("f32 gemv (bandwidth)", f32_pass(f32, lib, threads), sum(w.nbytes for w in f32))]
        for bits in (8, 4):
            nbytes = sum(w.nbytes for w in quant[bits])
            rows.append(
                (f"q{bits} exact (gemv_quant)", quant_pass(quant[bits], lib.gemv_quant, threads), nbytes)
            )
            rows.append(
                (f"q{bits} int8 (gemv_q8act)", quant_pass(quant[bits], lib.gemv_q8act, threads), nbytes)
            )
        for name, run, nbytes in rows:
            t = best(run)
            print(
                f"| {name} | {threads} | {t * 1e3:.2f} | {nbytes / t / 1e9:.1f} | {weights / t / 1e9:.1f} |"
            )


if __name__ == "__main__":
    main()
