"""Engine benchmark on random weights in Qwen3-0.6B's exact shapes, beside the machine's limits.

    python -m bench.engine_bench            # numpy + transformers + mlx, writes docs/benchmarks.md "## Engine"
    python -m bench.engine_bench --quick    # shorter prompts, fewer decode steps, no docs update

Each engine runs in its own subprocess (clean peak RSS): numpy and transformers (torch CPU fp32, same
checkpoint) prefill 512 and 2048 tokens and decode after 512; mlx (reference BLAS on Linux CPUs) runs
a short prefill and a few decode steps. The "weight floor" is a plain numpy fp32 pass (x @ W) over the
model's own weights: the decode speed that memory bandwidth allows.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import machine

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
        for name, shape in shapes.items():
            if len(shape) == 1:
                values = np.ones(shape, np.float32)
            else:
                values = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
            (values.view(np.uint32) >> 16).astype(np.uint16).tofile(fh)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return sum(math.prod(s) for s in shapes.values())


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def prompt_ids(n: int, vocab: int) -> list[int]:
    return [int(x) for x in np.random.default_rng(n).integers(0, vocab, n)]


def run_engine(path: Path, backend: str, prefill: list[int], decode_after: int, decode_steps: int) -> dict:
    import engine

    t0 = time.perf_counter()
    model = engine.load_model(path, backend=backend)
    out: dict = {"load_s": time.perf_counter() - t0, "load_peak_rss_gb": peak_rss_gb()}
    vocab = model.config.vocab_size
    for n in prefill:
        cache, ids = model.make_cache(), prompt_ids(n, vocab)
        t0 = time.perf_counter()
        model.forward(ids, cache)
        out[f"prefill_{n}_tok_s"] = n / (time.perf_counter() - t0)
    cache = model.make_cache()
    logits = model.forward(prompt_ids(decode_after, vocab), cache)
    t0 = time.perf_counter()
    for _ in range(decode_steps):
        logits = model.forward([int(np.argmax(logits))], cache)
    out["decode_tok_s"] = decode_steps / (time.perf_counter() - t0)
    if backend == "numpy":
        out |= weight_floor(model.network)
    out["peak_rss_gb"] = peak_rss_gb()
    return out


def weight_floor(network: object) -> dict:
    """A plain numpy fp32 pass over the model's own weight matrices: x @ W once each, as decode must."""
    from engine.backends.numpy_backend import LinearWeight

    mats = []
    for layer in network.layers:  # type: ignore[attr-defined]
        a, m = layer.self_attn, layer.mlp
        mats += [a.qkv.wt, a.o_proj.wt, m.gate_up.wt, m.down.wt]
    head = network.lm_head  # type: ignore[attr-defined]
    mats.append(head.wt if isinstance(head, LinearWeight) else head.T)
    xs = [np.ones((1, w.shape[0]), np.float32) for w in mats]
    nbytes = sum(w.nbytes for w in mats)
    best = min(_timed(lambda: [x @ w for x, w in zip(xs, mats, strict=True)]) for _ in range(5))
    return {"weight_gb": nbytes / 1e9, "floor_tok_s": 1 / best, "floor_gbs": nbytes / best / 1e9}


def _timed(fn: object) -> float:
    t0 = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t0


def run_transformers(path: Path, prefill: list[int], decode_after: int, decode_steps: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    out: dict = {
        "load_s": time.perf_counter() - t0,
        "load_peak_rss_gb": peak_rss_gb(),
        "threads": torch.get_num_threads(),
    }
    vocab = model.config.vocab_size
    with torch.inference_mode():
        for n in prefill:
            ids = torch.tensor([prompt_ids(n, vocab)])
            for label, kwargs in (("", {}), ("_last_logits", {"logits_to_keep": 1})):
                t0 = time.perf_counter()
                model(ids, **kwargs)
                out[f"prefill_{n}{label}_tok_s"] = n / (time.perf_counter() - t0)
        result = model(torch.tensor([prompt_ids(decode_after, vocab)]), use_cache=True, logits_to_keep=1)
        past, token = result.past_key_values, result.logits[0, -1].argmax().view(1, 1)
        t0 = time.perf_counter()
        for _ in range(decode_steps):
            result = model(token, past_key_values=past, use_cache=True)
            past, token = result.past_key_values, result.logits[0, -1].argmax().view(1, 1)
        out["decode_tok_s"] = decode_steps / (time.perf_counter() - t0)
    out["peak_rss_gb"] = peak_rss_gb()
    return out


def in_subprocess(args: list[str]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.engine_bench", "--worker", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fmt(value: object, digits: int = 1) -> str:
    return f"{value:,.{digits}f}" if isinstance(value, (int, float)) else "-"


def render(results: dict, limits: dict, params: int, args: argparse.Namespace) -> str:
    np_r, tf_r, mx_r = results["numpy"], results["transformers"], results.get("mlx", {})
    long_n, short_n = args.prefill[-1], args.prefill[0]
    matmul_params = params - QWEN3_06B["vocab_size"] * QWEN3_06B["hidden_size"]
    rows = [
        ("numpy", np_r, f"prefill_{short_n}_tok_s", f"prefill_{long_n}_tok_s"),
        ("transformers fp32 (all logits)", tf_r, f"prefill_{short_n}_tok_s", f"prefill_{long_n}_tok_s"),
        (
            "transformers fp32 (last logits only)",
            tf_r,
            f"prefill_{short_n}_last_logits_tok_s",
            f"prefill_{long_n}_last_logits_tok_s",
        ),
    ]
    lines = [
        "## Engine",
        "",
        f"`python -m bench.engine_bench{' --quick' if args.quick else ''}` — random weights in Qwen3-0.6B's exact "
        f"shapes ({params / 1e6:.0f}M parameters, bf16 checkpoint, computed in fp32; decode after "
        f"{args.decode_after} tokens, {args.decode_steps} steps). {time.strftime('%Y-%m-%d')}, "
        f"{os.cpu_count()} CPUs (shared with other work: figures vary by ~10-20% run to run).",
        "",
        f"| engine | load s | load peak RSS GB | prefill {short_n} tok/s | prefill {long_n} tok/s "
        f"| decode tok/s | peak RSS GB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, r, short_key, long_key in rows:
        lines.append(
            f"| {label} | {fmt(r.get('load_s'))} | {fmt(r.get('load_peak_rss_gb'), 2)} | "
            f"{fmt(r.get(short_key))} | {fmt(r.get(long_key))} | {fmt(r.get('decode_tok_s'), 2)} | "
            f"{fmt(r.get('peak_rss_gb'), 2)} |"
        )
    if mx_r:
        lines.append(
            f"| mlx (CPU; prefill {args.mlx_prefill}, {args.mlx_decode_steps} decode steps) | "
            f"{fmt(mx_r.get('load_s'))} | {fmt(mx_r.get('load_peak_rss_gb'), 2)} | "
            f"{fmt(mx_r.get(f'prefill_{args.mlx_prefill}_tok_s'))} | - | "
            f"{fmt(mx_r.get('decode_tok_s'), 2)} | {fmt(mx_r.get('peak_rss_gb'), 2)} |"
        )
    ratio_prefill = np_r[f"prefill_{long_n}_tok_s"] / tf_r[f"prefill_{long_n}_tok_s"]
    ratio_prefill_last = np_r[f"prefill_{long_n}_tok_s"] / tf_r[f"prefill_{long_n}_last_logits_tok_s"]
    gemm = limits["GEMM GFLOP/s (numpy fp32, 1024^3)"]
    achieved = 2 * matmul_params * np_r[f"prefill_{long_n}_tok_s"] / 1e9
    lines += [
        "",
        f"- numpy weight floor (x @ W over the model's own {np_r['weight_gb']:.2f} GB of fp32 weights): "
        f"{np_r['floor_tok_s']:.2f} tok/s at {np_r['floor_gbs']:.1f} GB/s "
        f"(matvec limit below: {limits['matvec GB/s (numpy fp32, 96 MiB)']:.1f} GB/s).",
        f"- numpy decode / weight floor: **{np_r['decode_tok_s'] / np_r['floor_tok_s']:.0%}** (target >= 90%).",
        f"- numpy prefill {long_n} / transformers fp32: **{ratio_prefill:.2f}x** (target >= 1.2x); against "
        f"transformers computing only the last position's logits: {ratio_prefill_last:.2f}x.",
        f"- numpy prefill {long_n} runs the weight matmuls at {achieved:.0f} GFLOP/s "
        f"({achieved / gemm:.0%} of the GEMM limit below; attention is extra).",
        f"- numpy load peak RSS / final fp32 weights: {np_r['load_peak_rss_gb'] / np_r['weight_gb']:.2f} "
        f"(target <= 1.3).",
        "- mlx on Linux runs mlx's CPU backend (reference BLAS, ~1 GFLOP/s matmuls here), hence the short run;"
        " on Apple Silicon mlx is the default backend.",
        "",
        "Machine limits measured in the same run:",
        "",
        machine.limits_table(limits),
        "",
    ]
    return "\n".join(lines)


def write_section(section: str) -> None:
    text = BENCH_DOC.read_text() if BENCH_DOC.exists() else "# Benchmarks\n"
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "## Engine"), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        new = (
            "\n".join([*lines[:start], *section.rstrip("\n").splitlines(), "", *lines[end:]]).rstrip("\n")
            + "\n"
        )
    BENCH_DOC.write_text(new if new.endswith("\n") else new + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="prefill 128/512, 8 decode steps, no docs update"
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["transformers", "mlx"])
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, path, spec = args.worker[0], Path(args.worker[1]), json.loads(args.worker[2])
        if kind == "transformers":
            print(json.dumps(run_transformers(path, **spec)))
        else:
            print(json.dumps(run_engine(path, kind, **spec)))
        return
    args.prefill = [128, 512] if args.quick else [512, 2048]
    args.decode_after, args.decode_steps = (256, 8) if args.quick else (512, 32)
    args.mlx_prefill, args.mlx_decode_steps = 16, 3
    with tempfile.TemporaryDirectory(prefix="wb-engine-bench-") as tmp:
        path = Path(tmp) / "qwen3-0.6b-shape"
        params = write_random_checkpoint(path, QWEN3_06B)
        spec = {"prefill": args.prefill, "decode_after": args.decode_after, "decode_steps": args.decode_steps}
        results = {"numpy": in_subprocess(["numpy", str(path), json.dumps(spec)])}
        print("numpy", results["numpy"], flush=True)
        if "transformers" not in args.skip:
            results["transformers"] = in_subprocess(["transformers", str(path), json.dumps(spec)])
            print("transformers", results["transformers"], flush=True)
        if "mlx" not in args.skip:
            mlx_spec = {
                "prefill": [args.mlx_prefill],
                "decode_after": args.mlx_prefill,
                "decode_steps": args.mlx_decode_steps,
            }
            results["mlx"] = in_subprocess(["mlx", str(path), json.dumps(mlx_spec)])
            print("mlx", results["mlx"], flush=True)
        limits = machine.measure_limits(directory=tmp)
    if "transformers" not in results or "error" in results["numpy"] or "error" in results["transformers"]:
        print(machine.limits_table(limits))
        return
    section = render(results, limits, params, args)
    print(section)
    if not args.quick:
        write_section(section)
        print(f"wrote {BENCH_DOC} (## Engine)")


if __name__ == "__main__":
    main()
