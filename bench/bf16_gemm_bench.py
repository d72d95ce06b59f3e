"""Short prefills with bfloat16 weights: kernels_gemm.c's gemm_bf16 against widening + BLAS, by tokens.

    flock /tmp/workbench-bench.lock python -m bench.bf16_gemm_bench [--tokens 1,4,16,32,64,128]

Random Qwen3-0.6B-shaped bfloat16 weights (every layer's qkv, o_proj, gate_up and down: 880 MB, more
than the L3, as a prefill streams them); each row is the time to multiply T token rows through all of
them, both ways, interleaved, best of --repeats. Prints where gemm_bf16 stops winning: the crossover
numpy_bf16.GEMM_MAX_TOKENS is set from. Where the CPU has a bfloat16 matrix unit (Intel AMX), a third
column times precision bf16's product (kernels_amx.c: the activations rounded to bfloat16).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.engine_bench import QWEN3_06B, write_random_checkpoint
from bench.engine_runners import weights_of


def _best(fn: object, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--tokens", default="1,4,16,32,64,128")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="keep the checkpoint here (reused if there)")
    args = parser.parse_args()
    import engine
    from engine.backends import numpy_bf16

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.dir or Path(tmp) / "model"
        if not (model_dir / "model.safetensors").exists():
            write_random_checkpoint(model_dir, QWEN3_06B)
        model = engine.load_model(model_dir, backend="numpy")
        mats = weights_of(model.network)[:-1]  # the layers' matrices; the output projection sees one row
        nbytes = sum(w.nbytes for w in mats)
        print(f"{len(mats)} bfloat16 matrices, {nbytes / 1e6:.0f} MB; ms for all of them (GFLOP/s)")
        unit = numpy_bf16.matrix_unit_missing() is None
        extra = (" matrix unit (bf16) |", " ---: |") if unit else ("", "")
        print(f"| tokens | gemm_bf16 | widen + BLAS |{extra[0]} gemm / widen |")
        print(f"| ---: | ---: | ---: |{extra[1]} ---: |")
        rng = np.random.default_rng(0)
        for t in (int(n) for n in args.tokens.split(",")):
            xs = {w.shape[1]: rng.standard_normal((t, w.shape[1]), np.float32) for w in mats}
            flops = sum(2 * t * w.shape[0] * w.shape[1] for w in mats)

            def direct(xs: dict = xs) -> None:
                for w in mats:
                    numpy_bf16.gemm(xs[w.shape[1]], w)

            def widened(xs: dict = xs) -> None:
                for w in mats:
                    numpy_bf16.widened_matmul(xs[w.shape[1]], w)

            def on_unit(xs: dict = xs) -> None:
                for w in mats:
                    numpy_bf16.matrix_unit_matmul(xs[w.shape[1]], w)

            times = [
                _best(fn, args.repeats) for fn in ((direct, widened, on_unit) if unit else (direct, widened))
            ]
            cells = [f"{1e3 * s:.1f} ({flops / s / 1e9:.0f})" for s in times]
            print(f"| {t} | {' | '.join(cells)} | {times[0] / times[1]:.2f} |")


if __name__ == "__main__":
    main()
