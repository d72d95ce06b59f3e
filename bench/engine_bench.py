"""Engine benchmark on random weights in Qwen3-0.6B's exact shapes, beside the machine's limits.

    python -m bench.engine_bench           # numpy, transformers, mlx; writes docs/benchmarks.md "## Engine"
    python -m bench.engine_bench --quick    # shorter prompts, fewer decode steps, no docs update

Each engine runs in its own subprocess (clean peak RSS): numpy and transformers (torch CPU fp32, same
checkpoint) prefill 512 and 2048 tokens and decode after 512; mlx (reference BLAS on Linux CPUs) runs
a short prefill and a few decode steps. The "weight floor" is a plain numpy fp32 pass (x @ W) over the
model's own weights: the decode speed that memory bandwidth allows, and the prefill speed of its
weight matmuls alone.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench import machine
from bench.engine_runners import EngineRunner, TransformersRunner, WeightFloorRunner, weights_of
from bench.report import worker_result, write_section

# Qwen3-0.6B (config.json of Qwen/Qwen3-0.6B), tied embeddings.
QWEN3_06B = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "hidden_size": 1024,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "intermediate_size": 3072,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000,
    "rope_scaling": None,
    "attention_bias": False,
    "hidden_act": "silu",
    "torch_dtype": "bfloat16",
}
NOTES = """\
Where the time goes (lead's profiles, 2026-11-22). Prefill 2048: weight matmuls ~68% (OpenBLAS
sgemm, incl. ~1% widening bf16 weights; the floor's prefill column is the matmuls alone), attention
~26%, elementwise ~3%, the rest ~3%; transformers' own profile of the same prefill: matmuls 6.5 s,
fused flash attention 2.5 s, elementwise ~2 s, plus 2.6 s for the logits of every position. torch's
matmuls (MKL) are ~1.2x OpenBLAS's on these shapes with two threads, equal with one, and lose less
than OpenBLAS's when the machine's other tenants load it (then 1.16x with one thread, 1.23x with
two): the prefill ratio swings with that load (1.21-1.42x in the last seven runs). Decode after 512
tokens: the matrix-vector products, then the KV-cache read (117 MB per step, 10% of the bf16
weights' bytes), then Python between the C calls ~3%.
What got here: numpy keeps a bf16 checkpoint's weights as bf16 (engine/backends/numpy_bf16.py), so a
decode step streams half the bytes of the fp32 floor: decode went from 8.5 to 16.9 tok/s, model
load from 5.9 to 0.5-3.6 s, memory from 2.4 to 1.2 GB. Widening bf16 is exact, so results are
unchanged: the C matrix-vector product widens in registers (1.7-2.1x its fp32 twin's speed:
widening leaves the hardware prefetcher behind, so it prefetches two row groups ahead, spread over
the loop; a burst per group measured 1.5x, none 1.15x), and prefill widens each weight for BLAS into
a reused buffer (~0.1 s per pass over the layers). Prefill goes in chunks of 2048 tokens instead of 1024: one
widening per chunk, ~5% faster at 2048 tokens, and a cancel is still seen between layers. A model's
numpy caches reuse the key/value arrays of caches that are gone
(engine/kvpool.py), as llama.cpp allocates its KV memory once. On this VM the balloon driver takes
freed memory back: 2 GiB freed and touched again at once ran at 3.8 GB/s, after 1 s idle 1.9, after
3-30 s 0.3 GB/s (how much depends on what else the guest has freed lately). A 2048 prefill on a
fresh cache made 100-140k page faults and took ~20% longer; it now makes none. The prefill ratio
moved from 1.07-1.22x to 1.17-1.43x (four runs) with this change. Prefill attention gives each core its own
kv heads with single-threaded BLAS, so a head's scores stay in L2 (~25% faster attention); OpenBLAS's
idle workers sleep after 2^20 cycles instead of 2^28, since they took a core from every thread of ours
(engine sets OPENBLAS_THREAD_TIMEOUT before numpy loads OpenBLAS). Decode calls no BLAS: its
matrix-vector products and KV-cache attention are C loops split over the cores by a pool of spinning C
threads (a hand-off of a few us, against ~140 us for a Python thread); the attention reads each kv
head once for all its query heads (1.7x) and prefetches 12 rows ahead (1.6x). The last layer of a
prefill runs attention and MLP only for the rows whose logits are read (1/28 of that work). Earlier:
a reused scores buffer, no huge-page advice, one-pass C loops for rms_norm, rope, SwiGLU and the causal
softmax. Tried and dropped: an AVX-512 sgemm of our own (12x32 micro-kernel, packed panels: 0.8x
OpenBLAS on one core, and two cores scale it by the same ~1.45x as OpenBLAS), OpenMP threads for
decode attention (they fought OpenBLAS's spinning workers: 6x slower), OpenBLAS's batched GEMM (this
build crashes on small batches), per-head threaded BLAS gemv called from C (no faster), non-temporal
prefetching in the matrix-vector product (slower).
"""

ROOT = Path(__file__).resolve().parent.parent
BENCH_DOC = ROOT / "docs" / "benchmarks.md"


def tensor_shapes(c: dict) -> dict[str, tuple[int, ...]]:
    h, d, i = c["hidden_size"], c["head_dim"], c["intermediate_size"]
    q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (c["vocab_size"], h),
        "model.norm.weight": (h,),
    }
    for n in range(c["num_hidden_layers"]):
        p = f"model.layers.{n}"
        shapes |= {
            f"{p}.input_layernorm.weight": (h,),
            f"{p}.post_attention_layernorm.weight": (h,),
            f"{p}.self_attn.q_proj.weight": (q, h),
            f"{p}.self_attn.k_proj.weight": (kv, h),
            f"{p}.self_attn.v_proj.weight": (kv, h),
            f"{p}.self_attn.o_proj.weight": (h, q),
            f"{p}.self_attn.q_norm.weight": (d,),
            f"{p}.self_attn.k_norm.weight": (d,),
            f"{p}.mlp.gate_proj.weight": (i, h),
            f"{p}.mlp.up_proj.weight": (i, h),
            f"{p}.mlp.down_proj.weight": (h, i),
        }
    return shapes


def write_random_checkpoint(directory: Path, config: dict, seed: int = 0) -> int:
    """A bfloat16 model.safetensors with random weights (norms at 1); returns the parameter count."""
    rng = np.random.default_rng(seed)
    shapes = tensor_shapes(config)
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 2 * math.prod(shape)
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header_bytes = json.dumps(header).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "model.safetensors").open("wb") as fh:
        fh.write(len(header_bytes).to_bytes(8, "little"))
        fh.write(header_bytes)
        for shape in shapes.values():
            if len(shape) == 1:
                values = np.ones(shape, np.float32)
            else:
                values = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
            (values.view(np.uint32) >> 16).astype(np.uint16).tofile(fh)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return sum(math.prod(s) for s in shapes.values())


def peak_rss_gb() -> float:
    """This process's peak resident memory. On Linux the high-water mark of its own address space
    (VmHWM): getrusage's ru_maxrss also keeps the peak of the process it was spawned from (Linux
    carries it across exec), which here is the bench's main process with its machine-limit buffers."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def prompt_ids(n: int, vocab: int) -> list[int]:
    return [int(x) for x in np.random.default_rng(n).integers(0, vocab, n)]


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


LONG_CONTEXTS = (2048, 8192)  # numpy decode at these cache lengths too: where the KV read outweighs weights


def compare(path: Path, prefill: list[int], decode_after: int, decode_steps: int, reps: int) -> dict:
    """numpy, its weight floor and transformers in one process, interleaved step by step, so that load
    from other work on the machine falls on all of them alike. Prefill: best of `reps`; decode: median
    step time."""
    numpy_runner = EngineRunner(path, "numpy")
    vocab = numpy_runner.model.config.vocab_size
    tf_all = TransformersRunner(path)
    runners: dict[str, Any] = {
        "numpy": numpy_runner,
        "transformers": tf_all,
        "transformers_last": TransformersRunner(path, True, tf_all.model),
        "floor": WeightFloorRunner(numpy_runner.model.network, numpy_runner.model.prefill_chunk),
    }
    out: dict[str, dict] = {name: {} for name in runners}
    for n in prefill:
        ids = prompt_ids(n, vocab)
        best = dict.fromkeys(runners, float("inf"))
        for _ in range(reps):
            for name, runner in runners.items():
                best[name] = min(best[name], _timed(lambda r=runner, i=ids: r.prefill(i)))
        for name, seconds in best.items():
            out[name][f"prefill_{n}_tok_s"] = n / seconds
    ids = prompt_ids(decode_after, vocab)
    steps: dict[str, list[float]] = {name: [] for name in runners if name != "transformers_last"}
    for name in steps:
        runners[name].start_decode(ids)
    for _ in range(decode_steps):
        for name in steps:
            steps[name].append(_timed(runners[name].decode_step))
    for name, times in steps.items():
        out[name]["decode_tok_s"] = 1 / float(np.median(times))
    for context in LONG_CONTEXTS:  # numpy only: a transformers prefill of 8k tokens would take minutes
        numpy_runner.start_decode_at(context)
        times = [_timed(numpy_runner.decode_step) for _ in range(decode_steps // 2)]
        out["numpy"][f"decode_at_{context}_tok_s"] = 1 / float(np.median(times))
        numpy_runner.cache = None  # its arrays go back to the model's pool
    out["numpy"]["weight_gb"] = sum(w.nbytes for w in weights_of(numpy_runner.model.network)) / 1e9
    out["floor"] |= {
        "weight_gb": runners["floor"].nbytes / 1e9,
        "floor_gbs": runners["floor"].nbytes * out["floor"]["decode_tok_s"] / 1e9,
    }
    out["transformers_last"]["decode_tok_s"] = out["transformers"]["decode_tok_s"]
    return out


def footprint(path: Path, backend: str, prefill: list[int], decode_steps: int) -> dict:
    """Load time and peak RSS of one engine alone: after loading, and after a prefill + decode."""
    runner = TransformersRunner(path) if backend == "transformers" else EngineRunner(path, backend)
    out: dict = {"load_s": runner.load_s, "load_peak_rss_gb": peak_rss_gb()}
    vocab = 151936
    for n in prefill:
        out[f"prefill_{n}_tok_s"] = n / _timed(lambda n=n: runner.prefill(prompt_ids(n, vocab)))
    runner.start_decode(prompt_ids(prefill[-1], vocab))
    out["decode_tok_s"] = decode_steps / _timed(lambda: [runner.decode_step() for _ in range(decode_steps)])
    out["peak_rss_gb"] = peak_rss_gb()
    return out


def in_subprocess(args: list[str]) -> dict:
    try:
        return worker_result("bench.engine_bench", "--worker", args)
    except RuntimeError as error:  # reported in the table (mlx may be missing)
        return {"error": str(error)}


def fmt(value: object, digits: int = 1) -> str:
    return f"{value:,.{digits}f}" if isinstance(value, (int, float)) else "-"


def render(results: dict, limits: dict, params: int, args: argparse.Namespace) -> str:
    cmp_, short_n, long_n = results["compare"], args.prefill[0], args.prefill[-1]
    np_r, tf_r, tfl_r, floor = cmp_["numpy"], cmp_["transformers"], cmp_["transformers_last"], cmp_["floor"]
    np_fp, tf_fp, mx_r = results["numpy_footprint"], results["transformers_footprint"], results.get("mlx", {})
    lines = [
        "## Engine",
        "",
        f"`python -m bench.engine_bench{' --quick' if args.quick else ''}`: random weights in Qwen3-0.6B's "
        f"exact shapes ({params / 1e6:.0f}M parameters, bf16 checkpoint, computed in fp32), "
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs shared with other work. numpy, transformers "
        f"(torch {results.get('torch', '?')} CPU fp32, same checkpoint) and the weight floor run interleaved "
        f"in one process (prefill: best of {args.reps}; decode after {args.decode_after} tokens: median of "
        f"{args.decode_steps} steps); load time and peak RSS come from each engine alone.",
        "",
        f"| engine | load s | load peak RSS GB | peak RSS GB | prefill {short_n} tok/s "
        f"| prefill {long_n} tok/s | decode tok/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def row(label: str, speed: dict, foot: dict) -> str:
        return (
            f"| {label} | {fmt(foot.get('load_s'))} | {fmt(foot.get('load_peak_rss_gb'), 2)} | "
            f"{fmt(foot.get('peak_rss_gb'), 2)} | {fmt(speed.get(f'prefill_{short_n}_tok_s'))} | "
            f"{fmt(speed.get(f'prefill_{long_n}_tok_s'))} | {fmt(speed.get('decode_tok_s'), 2)} |"
        )

    lines += [
        row("engine numpy", np_r, np_fp),
        row("transformers fp32 (logits of all positions)", tf_r, tf_fp),
        row("transformers fp32 (last position's logits)", tfl_r, tf_fp),
        row("numpy weight floor (x @ W over the same weights, nothing else)", floor, {}),
    ]
    if mx_r and "error" not in mx_r:
        mlx_speed = {f"prefill_{short_n}_tok_s": None, "decode_tok_s": mx_r.get("decode_tok_s")}
        lines.append(
            row(
                f"engine mlx (CPU; {args.mlx_decode_steps} decode steps after {args.mlx_prefill} "
                f"tokens; prefill {args.mlx_prefill}: {fmt(mx_r.get(f'prefill_{args.mlx_prefill}_tok_s'))}"
                " tok/s)",
                mlx_speed,
                mx_r,
            )
        )
    matmul_params = params - QWEN3_06B["vocab_size"] * QWEN3_06B["hidden_size"]
    floor_gflops = 2 * matmul_params * floor[f"prefill_{long_n}_tok_s"] / 1e9
    prefill_vs_floor = np_r[f"prefill_{long_n}_tok_s"] / floor[f"prefill_{long_n}_tok_s"]
    decode_ratio = np_r["decode_tok_s"] / floor["decode_tok_s"]
    own_floor = floor["floor_gbs"] / np_r["weight_gb"]  # tok/s if its own bytes streamed at that speed
    q = QWEN3_06B
    kv_bytes_per_token = 2 * q["num_hidden_layers"] * q["num_key_value_heads"] * q["head_dim"] * 4
    lines += [
        "",
        f"- numpy decode / weight floor ({floor['weight_gb']:.2f} GB of fp32 weights streamed at "
        f"{floor['floor_gbs']:.1f} GB/s): **{decode_ratio:.0%}** (target >= 90%).",
        f"- numpy keeps this bf16 checkpoint's weights as bf16 ({np_r['weight_gb']:.2f} GB): at the "
        f"floor's bandwidth they would stream {own_floor:.1f} times per second; numpy decode reaches "
        f"{np_r['decode_tok_s'] / own_floor:.0%} of that.",
        f"- numpy prefill {long_n} / transformers fp32: "
        f"**{np_r[f'prefill_{long_n}_tok_s'] / tf_r[f'prefill_{long_n}_tok_s']:.2f}x** (target >= 1.2x); "
        f"against transformers computing only the last position's logits: "
        f"{np_r[f'prefill_{long_n}_tok_s'] / tfl_r[f'prefill_{long_n}_tok_s']:.2f}x.",
        f"- numpy decode / transformers decode: {np_r['decode_tok_s'] / tf_r['decode_tok_s']:.2f}x.",
        "- numpy decode at longer contexts (cache filled directly, not prefilled; float32 KV, "
        f"{kv_bytes_per_token / 1e3:.0f} KB per cached token): "
        + ", ".join(
            f"after {c} tokens {np_r[f'decode_at_{c}_tok_s']:.2f} tok/s "
            f"(KV read {c * kv_bytes_per_token / 1e9:.2f} GB)"
            for c in LONG_CONTEXTS
            if f"decode_at_{c}_tok_s" in np_r
        )
        + f", against {np_r['weight_gb']:.2f} GB of weights per step.",
        f"- numpy prefill {long_n} / its weight matmuls alone (the floor's prefill, {floor_gflops:.0f} "
        f"GFLOP/s): {prefill_vs_floor:.0%}; the rest is attention and elementwise work.",
        f"- numpy load peak RSS / its final weights ({np_r['weight_gb']:.2f} GB): "
        f"{np_fp['load_peak_rss_gb'] / np_r['weight_gb']:.2f} "
        "(target <= 1.3).",
        "- mlx on Linux uses its CPU backend (reference BLAS: about 1 GFLOP/s matmuls here), hence the short "
        "run; on Apple Silicon mlx is the default backend.",
        "",
        NOTES.rstrip("\n"),
        "",
        "Machine limits, measured in the same run (`bench/machine.py`):",
        "",
        machine.limits_table(limits),
        "",
    ]
    return "\n".join(lines)


def run_worker(argv: list[str]) -> None:
    kind, path, spec = argv[0], Path(argv[1]), json.loads(argv[2])
    result = compare(path, **spec) if kind == "compare" else footprint(path, kind, **spec)
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="prefill 128/512, 8 decode steps, no docs update"
    )
    parser.add_argument("--skip-mlx", action="store_true")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker)
        return
    args.prefill = [128, 512] if args.quick else [512, 2048]
    args.decode_after, args.decode_steps, args.reps = (256, 8, 1) if args.quick else (512, 24, 5)
    args.mlx_prefill, args.mlx_decode_steps = 16, 3
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="wb-engine-bench-") as tmp:
        path = Path(tmp) / "qwen3-0.6b-shape"
        params = write_random_checkpoint(path, QWEN3_06B)
        foot = {"prefill": [512], "decode_steps": 4}
        jobs = {
            "numpy_footprint": ["numpy", foot],
            "transformers_footprint": ["transformers", foot],
            "compare": [
                "compare",
                {
                    "prefill": args.prefill,
                    "decode_after": args.decode_after,
                    "decode_steps": args.decode_steps,
                    "reps": args.reps,
                },
            ],
        }
        if not args.skip_mlx:
            jobs["mlx"] = ["mlx", {"prefill": [args.mlx_prefill], "decode_steps": args.mlx_decode_steps}]
        for name, (kind, spec) in jobs.items():
            results[name] = in_subprocess([kind, str(path), json.dumps(spec)])
            print(name, results[name], flush=True)
            if "error" in results[name] and name != "mlx":
                raise SystemExit(f"{name} failed: {results[name]['error']}")
        limits = machine.measure_limits(directory=tmp)
    import torch

    results["torch"] = torch.__version__
    section = render(results, limits, params, args)
    print(section)
    if not args.quick:
        write_section(section)
        print(f"wrote {BENCH_DOC} (## Engine)")


if __name__ == "__main__":
    main()
