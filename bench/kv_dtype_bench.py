"""Decode with a float32 and a float16 KV cache (issue 18), after 512, 2k and 8k positions, in one run.

    python -m bench.kv_dtype_bench [--at 512,2048,8192] [--rounds 2] [--llama-at 2048] [--write]

Qwen3-0.6B's exact shapes with random bfloat16 weights. Each case is its own process (one engine, one
cache): ours loads the model with `kv_dtype` float32 or float16 and fills the cache with random keys
and values up to the position (a decode step reads the same bytes whatever they hold), then times 12
greedy steps (median of the last 10). llama.cpp (llama-cpp-python, the F16 GGUF, its default float16
cache) prefills the same number of prompt ids for real at the positions of --llama-at (a cold 8k
prefill takes minutes: opt in). Cases run round-robin, so load from other work falls on all alike.
Printed: ms per step, tok/s, the ratios (of medians) to our float32 cache and to llama.cpp, the
bytes a step streams (weights + KV) and their GB/s beside numpy's matrix-vector bandwidth measured
in this run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import machine
from bench.engine_bench import QWEN3_06B, prompt_ids, write_random_checkpoint
from bench.report import ROOT, write_section

STEPS = 12


def _steps(step) -> float:
    times = []
    for _ in range(STEPS):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[2:])


def worker_ours(model_dir: str, kv_dtype: str, at: str) -> dict:
    from bench.engine_runners import EngineRunner, weights_of

    runner = EngineRunner(Path(model_dir), "numpy", kv_dtype=kv_dtype)
    runner.start_decode_at(int(at))
    step_s = _steps(runner.decode_step)
    weights = sum(w.nbytes for w in weights_of(runner.model.network))
    return {"step_s": step_s, "weight_bytes": weights, "kv_bytes": runner.cache.nbytes()}


def worker_llama(gguf: str, at: str) -> dict:
    from bench.llama_peer import LlamaRunner

    n = int(at)
    runner = LlamaRunner(Path(gguf), n + 64, 2)
    runner.start_decode(prompt_ids(n, QWEN3_06B["vocab_size"]))
    return {"step_s": _steps(runner.decode_step)}


def run_worker(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bench.kv_dtype_bench", "--worker", *args],
                          capture_output=True, text=True, cwd=ROOT, check=False)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args} failed: {proc.stderr.strip()[-1500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        kind, *rest = sys.argv[2:]
        print(json.dumps(worker_llama(*rest) if kind == "llama" else worker_ours(*rest)))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--at", default="512,2048,8192", help="positions to decode after")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--llama-at", default="", help="positions llama.cpp prefills, then decodes after")
    p.add_argument("--dir", help="keep the checkpoint (and GGUF) here (reused when present)")
    p.add_argument("--write", action="store_true", help="write the table to docs/benchmarks.md")
    args = p.parse_args()
    ats = [a for a in args.at.split(",") if a]
    llama_ats = [a for a in args.llama_at.split(",") if a]
    limits = {"matvec_gbs": machine.matvec_gbs(), "memory_read_gbs": machine.memory_read_gbs()}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(args.dir or tmp_s)
        model_dir = tmp / "model"
        if not (model_dir / "config.json").exists():
            write_random_checkpoint(model_dir, QWEN3_06B)
        gguf = tmp / "model-F16.gguf"
        if llama_ats and not gguf.exists():
            from bench.llama_peer import gguf_models

            gguf_models(model_dir, tmp, ["F16"])
        results: dict[tuple[str, str], list[dict]] = {}
        for _ in range(args.rounds):
            for at in ats:
                for kv in ("float32", "float16"):
                    got = run_worker("ours", str(model_dir), kv, at)
                    results.setdefault((kv, at), []).append(got)
                    print(json.dumps({"kv": kv, "at": at, **got}), flush=True)
                if at in llama_ats:
                    got = run_worker("llama", str(gguf), at)
                    results.setdefault(("llama.cpp F16", at), []).append(got)
                    print(json.dumps({"llama.cpp": at, **got}), flush=True)
    section = table(ats, limits, results)
    print(section)
    if args.write:
        write_section(section)


def _range(values: list[float], fmt: str) -> str:
    lo, hi = min(values), max(values)
    return format(lo, fmt) if format(lo, fmt) == format(hi, fmt) else f"{format(lo, fmt)}–{format(hi, fmt)}"


def table(ats: list[str], limits: dict, results: dict[tuple[str, str], list[dict]]) -> str:
    day = time.strftime("%Y-%m-%d")
    lines = [
        "## Decode with a float16 KV cache (bench/kv_dtype_bench.py)",
        "",
        f"Run {day}, Qwen3-0.6B shapes, random bf16 weights, 2 threads, one process per case, "
        f"{len(next(iter(results.values())))} rounds (min–max). This run's numpy matvec bandwidth: "
        f"{limits['matvec_gbs']:.1f} GB/s; memory read {limits['memory_read_gbs']:.1f} GB/s.",
        "",
        "| after | cache | ms/step | tok/s | KV MB read | GB/s (weights + KV) | tok/s vs float32 "
        "| vs llama.cpp F16 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for at in ats:
        base = statistics.median([1 / r["step_s"] for r in results[("float32", at)]])
        peer_rows = results.get(("llama.cpp F16", at))
        peer = statistics.median([1 / r["step_s"] for r in peer_rows]) if peer_rows else None
        for kv in ("float32", "float16", "llama.cpp F16"):
            rows = results.get((kv, at))
            if not rows:
                continue
            tok_s = [1 / r["step_s"] for r in rows]
            ms = [r["step_s"] * 1e3 for r in rows]
            if "kv_bytes" in rows[0]:
                kv_mb = f"{rows[0]['kv_bytes'] / 1e6:.0f}"
                gbs = _range([(r["weight_bytes"] + r["kv_bytes"]) / r["step_s"] / 1e9 for r in rows], ".1f")
            else:
                kv_mb, gbs = "", ""
            ratio = f"{statistics.median(tok_s) / base:.2f}x" if kv != "float32" else ""
            vs_peer = f"{statistics.median(tok_s) / peer:.2f}x" if peer and kv != "llama.cpp F16" else ""
            lines.append(f"| {at} | {kv} | {_range(ms, '.1f')} | {_range(tok_s, '.1f')} | {kv_mb} | {gbs} | "
                         f"{ratio} | {vs_peer} |")  # fmt: skip
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
