"""Our numpy engine beside llama.cpp in the same run: random Qwen3-0.6B-shaped weights, same prompt ids.

    python -m bench.engine_peers            # prefill 512, decode 32 after 512, 2 rounds
    python -m bench.engine_peers --prefill 512,2048 --rounds 2
    python -m bench.engine_peers --engines q8,q4   # only the quantized pairs
    python -m bench.engine_peers --engines q8,q8-int8,q4,q4-int8   # + precision int8 (int8 activations)
    python -m bench.engine_peers --before /tmp/main-tree  # + that checkout's numpy bf16: before/after
    python -m bench.engine_peers --engines bf16,bf16-bf16 --prefill 512,2048  # + precision bf16 (AMX)

Each engine runs alone in its own long-lived process: engine numpy on the bf16 checkpoint and on its
MLX 8-bit and 4-bit copies (mx.quantize, groups of 64, as mlx-lm writes them, bench/mlx_quant.py), the
quantized ones also with precision int8 (engine/precision.py: int8 activations, integer dot products),
the bf16 one also with precision bf16 (bf16 activations on the CPU's matrix unit, where it has one);
llama.cpp on its F16, Q8_0 and Q4_0 conversions (bench/llama_peer.py). The main process hands them one
task at a time, round-robin, each of ours next to its llama.cpp peer, so that load from other work falls
on all of them alike and no two ever run at once. Printed: tok/s per task (min-max over rounds), each
engine's ratio to llama.cpp F16 and to its own peer, and the effective GB/s of its decode (weight bytes
x tok/s) against numpy's matrix-vector bandwidth measured in the same run. Without the bench extra it
says how to enable it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench import llama_peer, machine
from bench.engine_bench import QWEN3_06B, _timed, prompt_ids, write_random_checkpoint
from bench.mlx_quant import write_quantized

ROOT = Path(__file__).resolve().parent.parent
THREADS = os.cpu_count() or 1
# pair -> ((our engine, its weights (bits, group) quantized from the bf16 checkpoint, its precision),
# its llama.cpp peer)
PAIRS = {
    "bf16": (("numpy bf16", None, "fp32"), "llama.cpp F16"),
    "bf16-bf16": (("numpy bf16 precision bf16", None, "bf16"), "llama.cpp F16"),
    "q8": (("numpy q8 g64", (8, 64), "fp32"), "llama.cpp Q8_0"),
    "q8-int8": (("numpy q8 g64 int8", (8, 64), "int8"), "llama.cpp Q8_0"),
    "q4": (("numpy q4 g64", (4, 64), "fp32"), "llama.cpp Q4_0"),
    "q4-int8": (("numpy q4 g64 int8", (4, 64), "int8"), "llama.cpp Q4_0"),
}


def _serve(kind: str, path: str, context: int) -> None:
    """Worker: load one engine, then answer JSON tasks read from stdin, one line each, on a private fd
    (llama.cpp and OpenBLAS may write to stdout)."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    if kind.startswith("numpy"):  # "numpy" or "numpy:<precision>"
        from bench.engine_runners import EngineRunner, weights_of

        runner: Any = EngineRunner(Path(path), "numpy", kind.partition(":")[2] or "fp32")
        info = {
            "weight_bytes": sum(w.nbytes for w in weights_of(runner.model.network)),
            "load_s": runner.load_s,
        }
    else:
        runner = llama_peer.LlamaRunner(Path(path), context, THREADS)
        info = runner.info()
    out.write(json.dumps(info) + "\n")
    vocab = QWEN3_06B["vocab_size"]
    for line in sys.stdin:
        task = json.loads(line)
        if task["op"] == "prefill":
            ids = prompt_ids(task["n"], vocab)
            seconds = _timed(lambda ids=ids: runner.prefill(ids))
            out.write(json.dumps({"tok_s": task["n"] / seconds}) + "\n")
        else:
            runner.start_decode(prompt_ids(task["after"], vocab))
            steps = [_timed(runner.decode_step) for _ in range(task["steps"])]
            out.write(json.dumps({"tok_s": 1 / float(np.median(steps))}) + "\n")


class Worker:
    def __init__(self, kind: str, path: Path, context: int, tree: Path = ROOT) -> None:
        """`tree`: the checkout whose engine the worker imports (another one for a before/after run)."""
        cmd = [sys.executable, "-m", "bench.engine_peers", "--serve", kind, str(path), str(context)]
        env = {**os.environ, "PYTHONPATH": str(tree)}
        self.proc = subprocess.Popen(
            cmd, cwd=tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            raise RuntimeError(f"worker {self.proc.args} exited ({self.proc.wait()})")
        return json.loads(line)

    def ask(self, task: dict) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(task) + "\n")
        self.proc.stdin.flush()
        return float(self._read()["tok_s"])

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait()


def run(args: argparse.Namespace, tmp: Path) -> tuple[dict, dict, dict]:
    model_dir = tmp / "qwen3-0.6b-shape"
    write_random_checkpoint(model_dir, QWEN3_06B)
    pairs = [PAIRS[p] for p in args.engines]
    kinds = list(dict.fromkeys(peer.split()[-1] for _, peer in pairs))  # Q8_0 once for q8 and q8-int8
    ggufs = llama_peer.gguf_models(model_dir, tmp, kinds)
    context = max([*args.prefill, args.decode_after]) + args.decode_steps + 16
    engines: dict[str, tuple[str, Path, Path]] = {}
    if args.before:  # the same bf16 checkpoint on another checkout's engine, first in every round
        engines["numpy bf16 before"] = ("numpy", model_dir, args.before.resolve())
    copies: dict[tuple[int, int] | None, Path] = {None: model_dir}
    for (ours, quant, precision), peer in pairs:
        if quant not in copies:
            copies[quant] = tmp / f"q{quant[0]}-g{quant[1]}"
            write_quantized(model_dir, copies[quant], *quant)
        engines[ours] = (f"numpy:{precision}", copies[quant], ROOT)
        engines[peer] = ("llama", ggufs[peer.split()[-1]], ROOT)
    workers = {name: Worker(kind, path, context, tree) for name, (kind, path, tree) in engines.items()}
    tasks = [{"op": "prefill", "n": n} for n in args.prefill]
    tasks.append({"op": "decode", "after": args.decode_after, "steps": args.decode_steps})
    speeds: dict[str, dict[str, list[float]]] = {name: {} for name in workers}
    limits = {"matvec_gbs": [machine.matvec_gbs()]}
    try:
        for _ in range(args.rounds):
            for task in tasks:
                label = f"prefill {task['n']}" if task["op"] == "prefill" else f"decode after {task['after']}"
                for name, worker in workers.items():
                    speeds[name].setdefault(label, []).append(worker.ask(task))
        limits["matvec_gbs"].append(machine.matvec_gbs())
    finally:
        for worker in workers.values():
            worker.close()
    return speeds, {name: w.info for name, w in workers.items()}, limits


def render(speeds: dict, infos: dict, limits: dict, args: argparse.Namespace) -> str:
    labels = list(next(iter(speeds.values())))
    lines = [
        f"## {args.heading}",
        "",
        f"`python -m bench.engine_peers {' '.join(sys.argv[1:])}`: "
        f"llama-cpp-python {llama_peer.llama_cpp_version()}, {THREADS} threads, {args.rounds} rounds "
        f"interleaved, decode: median of {args.decode_steps} steps.",
        "",
        "| tok/s (min-max) | " + " | ".join(speeds) + " |",
        "| --- |" + " ---: |" * len(speeds),
    ]
    for label in labels:
        cells = [f"{min(s[label]):.1f}-{max(s[label]):.1f}" for s in speeds.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    ref = speeds.get("llama.cpp F16")
    for label in labels:
        if ref:
            ratios = [f"{max(s[label]) / max(ref[label]):.2f}x" for s in speeds.values()]
            lines.append(f"| {label}, best / llama.cpp F16 best | " + " | ".join(ratios) + " |")
    peers = {ours: peer for (ours, _, _), peer in PAIRS.values()}
    for label in labels:
        ratios = [
            f"{max(s[label]) / max(speeds[peers[n]][label]):.2f}x" if peers.get(n) in speeds else ""
            for n, s in speeds.items()
        ]
        lines.append(f"| {label}, ours best / its llama.cpp peer best | " + " | ".join(ratios) + " |")
    decode = labels[-1]
    gbs = [f"{infos[n]['weight_bytes'] * max(s[decode]) / 1e9:.1f}" for n, s in speeds.items()]
    lines.append("| decode GB/s of weights (best) | " + " | ".join(gbs) + " |")
    lines.append(
        "| weight GB | " + " | ".join(f"{i['weight_bytes'] / 1e9:.2f}" for i in infos.values()) + " |"
    )
    mv = limits["matvec_gbs"]
    lines += ["", f"numpy fp32 matrix-vector bandwidth in this run: {min(mv):.1f}-{max(mv):.1f} GB/s.", ""]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        _serve(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prefill", default="512", help="comma-separated prompt lengths")
    parser.add_argument("--decode-after", type=int, default=512)
    parser.add_argument("--decode-steps", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--engines",
        default="bf16,q8,q8-int8,q4,q4-int8",
        help=f"comma-separated pairs of ours and llama.cpp's: {', '.join(PAIRS)}",
    )
    parser.add_argument(
        "--before", type=Path, help="another checkout (e.g. `git archive main` unpacked): its numpy bf16 too"
    )
    parser.add_argument("--write-doc", action="store_true", help="replace the section in docs/benchmarks.md")
    parser.add_argument(
        "--heading", default="Engine peers (llama.cpp)", help="of the docs/benchmarks.md section"
    )
    args = parser.parse_args()
    args.prefill = [int(n) for n in args.prefill.split(",")]
    args.engines = args.engines.split(",")
    if unknown := set(args.engines) - set(PAIRS):
        parser.error(f"--engines: unknown {sorted(unknown)} (known: {', '.join(PAIRS)})")
    if llama_peer.llama_cpp_version() is None:
        raise SystemExit(llama_peer.ENABLE_HINT)
    with tempfile.TemporaryDirectory(prefix="wb-engine-peers-") as tmp:
        section = render(*run(args, Path(tmp)), args)
    print(section)
    if args.write_doc:
        from bench.report import write_section

        write_section(section)


if __name__ == "__main__":
    main()
