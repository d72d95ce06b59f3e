"""What generation adds on top of the forward pass: sampling, detokenizing, the loop, chat rendering.

    python -m bench.gen_bench            # prints the tables, writes docs/benchmarks.md "## Generation"
    python -m bench.gen_bench --quick    # fewer repetitions, no docs update

Each cost is quoted against the budget it eats into: one decode step of Qwen3-0.6B at the machine's
weight-bandwidth floor (its bf16 matmul weights / measured matvec bandwidth, measured in the same run).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench import machine
from bench.report import write_section

QWEN3_VOCAB = 151_936
# Qwen3-0.6B's matmul weights per decode step: 28 layers x (q 1024x2048, k,v 1024x1024, o 2048x1024,
# gate/up/down 1024x3072) + the tied lm_head 151936x1024, as bfloat16: the numpy backend keeps the
# checkpoint's bf16 weights (engine/backends/numpy_bf16.py).
QWEN3_STEP_BYTES = 2 * (28 * (1024 * 2048 * 2 + 1024 * 1024 * 2 + 3 * 1024 * 3072) + QWEN3_VOCAB * 1024)
HEADING = "## Generation"


def per_call_us(fn: Callable[[], object], n: int) -> float:
    """Fastest of n calls in microseconds, after one warm-up: the machine is shared, and the least
    disturbed run is the one that measures the code."""
    fn()
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e6


def lm_like_logits(vocab: int, seed: int) -> np.ndarray:
    """Zipf-shaped logits (as a trained LM's next-token distribution), shuffled over the vocabulary."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, vocab + 1, dtype=np.float32)
    logits = -1.2 * np.log(ranks) * 3 + rng.standard_normal(vocab).astype(np.float32) * 0.1
    return rng.permutation(logits).astype(np.float32)


def bench_sampling(n: int) -> list[tuple[str, float]]:
    import engine

    logits = lm_like_logits(QWEN3_VOCAB, 0)
    flat = (np.random.default_rng(1).standard_normal(QWEN3_VOCAB) * 0.5).astype(np.float32)
    history = list(np.random.default_rng(2).integers(0, QWEN3_VOCAB, 2000))
    cases = [
        ("greedy", engine.SamplingParams(), logits),
        ("temperature 0.7", engine.SamplingParams(temperature=0.7, seed=0), logits),
        ("top-k 20", engine.SamplingParams(temperature=0.7, top_k=20, seed=0), logits),
        ("top-p 0.95 (LM-shaped logits)", engine.SamplingParams(temperature=0.7, top_p=0.95, seed=0), logits),
        ("top-p 0.95 (flat logits)", engine.SamplingParams(temperature=0.7, top_p=0.95, seed=0), flat),
        ("min-p 0.05", engine.SamplingParams(temperature=0.7, min_p=0.05, seed=0), logits),
        (
            "Qwen3 defaults + rep. penalty 1.1 (2k seen)",
            engine.SamplingParams(temperature=0.6, top_k=20, top_p=0.95, repetition_penalty=1.1, seed=0),
            logits,
        ),
    ]
    rows = []
    for name, params, x in cases:
        sampler = engine.make_sampler(params, history)
        rows.append((name, per_call_us(lambda s=sampler, x=x: s(x), n)))
    return rows


def _tokenizer(directory: Path) -> object:
    from engine.tokenizer import Tokenizer
    from tests.fixtures.tokenizers import build_tokenizer

    build_tokenizer(directory, "qwen3", 384)
    return Tokenizer(directory)


def bench_detok(directory: Path, tokens: int) -> dict[str, float]:
    """Streaming detokenization vs re-decoding the whole reply every step (the naive way)."""
    from engine.detok import StreamingDetokenizer

    tok = _tokenizer(directory)
    text = "def f(x):\n    return 'héllo 🙂 日本語' + str(x)  # naïve café\n"
    ids = tok.encode(text * (tokens // len(tok.encode(text)) + 1))[:tokens]

    def stream() -> None:
        detok = StreamingDetokenizer(tok)
        for i in ids:
            detok.add(i)
        detok.flush()

    def naive() -> None:
        shown = ""
        for n in range(1, len(ids) + 1):
            full = tok.decode(ids[:n])
            if not full.endswith("\ufffd"):
                shown = full
        assert shown

    t_stream = per_call_us(stream, 10) / len(ids)
    t_naive = per_call_us(naive, 2) / len(ids)
    return {"tokens": len(ids), "stream_us": t_stream, "naive_us": t_naive}


def bench_loop(directory: Path, steps: int, rounds: int) -> dict[str, float]:
    """generate()'s own cost per token: a greedy run minus a bare forward+argmax loop, same model."""
    import engine
    from bench.engine_bench import write_random_checkpoint

    config = {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "intermediate_size": 128,
        "vocab_size": 384,
        "tie_word_embeddings": True,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000,
        "attention_bias": False,
        "hidden_act": "silu",
    }
    write_random_checkpoint(directory, config)
    _tokenizer(directory)
    # No EOS: both loops must run the same number of steps on this random model.
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": []}))
    tokenizer_config = json.loads((directory / "tokenizer_config.json").read_text())
    tokenizer_config.pop("eos_token")
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    model = TimedForward(engine.load_model(directory, backend="numpy"))
    prompt = [int(t) for t in np.random.default_rng(0).integers(0, 300, 32)]
    best = float("inf")
    for _ in range(rounds):
        model.forward_s = 0.0
        t0 = time.perf_counter()
        for _ in engine.generate(model, prompt, engine.SamplingParams(max_tokens=steps)):
            pass
        total = time.perf_counter() - t0
        best = min(best, (total - model.forward_s) / steps * 1e6)
    return {"steps": steps, "overhead_us": best, "forward_us": model.forward_s / steps * 1e6}


class TimedForward:
    """The model, with the time spent inside forward() added up: generate's own cost is the rest."""

    def __init__(self, model: object) -> None:
        self._model = model
        self.forward_s = 0.0

    def forward(self, ids: list[int], cache: object, cancel: Callable[[], bool] | None = None) -> np.ndarray:
        t0 = time.perf_counter()
        out = self._model.forward(ids, cache, cancel)
        self.forward_s += time.perf_counter() - t0
        return out

    def __getattr__(self, name: str) -> object:
        return getattr(self._model, name)


def bench_chat(directory: Path) -> dict[str, float]:
    from engine import chat

    tok = _tokenizer(directory)
    turns = []
    for i in range(10):
        turns += [
            {"role": "user", "content": f"Question {i}: what does file_{i}.py do? 🙂"},
            {"role": "assistant", "content": f"<think>\nlook at it\n</think>\n\nIt parses input {i}."},
        ]
    messages = [{"role": "system", "content": "You are a coding assistant."}, *turns[:-1]]
    tools = [{"type": "function", "function": {"name": "read_file", "parameters": {"type": "object"}}}]
    chat.compile_template.cache_clear()
    t0 = time.perf_counter()
    tok.render_chat(messages, tools=tools)
    first_ms = (time.perf_counter() - t0) * 1e3
    cached_us = per_call_us(lambda: tok.render_chat(messages, tools=tools), 50)
    return {"first_ms": first_ms, "cached_us": cached_us, "messages": len(messages)}


def render(sampling: list, detok: dict, loop: dict, chat_times: dict, limits: dict) -> str:
    bandwidth = limits["matvec GB/s (numpy fp32, 96 MiB)"]
    step_us = QWEN3_STEP_BYTES / (bandwidth * 1e9) * 1e6
    lines = [
        HEADING,
        "",
        "`python -m bench.gen_bench` — the cost of everything around the forward pass. Budget: one",
        f"Qwen3-0.6B decode step at the weight floor = {QWEN3_STEP_BYTES / 1e9:.2f} GB bf16 weights / "
        f"{bandwidth:.1f} GB/s matvec = **{step_us / 1e3:.1f} ms** (measured in this run; the machine is "
        "shared, so this floor moves between runs).",
        "",
        f"Sampling one token from a {QWEN3_VOCAB:,}-entry vocabulary:",
        "",
        "| sampler | µs / token (best of runs) | share of the decode step |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {name} | {us:,.0f} | {us / step_us:.2%} |" for name, us in sampling]
    lines += [
        "",
        f"Streaming detokenizer over {detok['tokens']} tokens of code with multi-byte text: "
        f"**{detok['stream_us']:.2f} µs/token** (byte-level path, O(1) per token) vs "
        f"{detok['naive_us']:.0f} µs/token re-decoding the whole reply each step "
        f"({detok['naive_us'] / detok['stream_us']:,.0f}x).",
        "",
        f"generate()'s own work per token (sampling, stop-string filter, detokenizer, deltas, timing; "
        f"everything but forward()), {loop['steps']} greedy tokens on a tiny model: "
        f"**{loop['overhead_us']:.0f} µs/token** ({loop['overhead_us'] / step_us:.3%} of the Qwen3-0.6B "
        "step; "
        "add the sampler's cost above for the real vocabulary).",
        "",
        f"Chat template (Qwen3, {chat_times['messages']} messages + tools): first render incl. compile "
        f"{chat_times['first_ms']:.1f} ms, then {chat_times['cached_us']:.0f} µs per render.",
        "",
        "Machine limits measured in the same run:",
        "",
        machine.limits_table(limits),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, no docs update")
    args = parser.parse_args()
    limits = {
        "memory read GB/s": machine.memory_read_gbs(),
        "matvec GB/s (numpy fp32, 96 MiB)": machine.matvec_gbs(),
        "GEMM GFLOP/s (numpy fp32, 1024^3)": machine.gemm_gflops(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sampling = bench_sampling(20 if args.quick else 100)
        detok = bench_detok(root / "tok", 500 if args.quick else 2000)
        loop = bench_loop(root / "model", 64 if args.quick else 256, 3 if args.quick else 8)
        chat_times = bench_chat(root / "tok")
    # Other processes share the machine: keep the better of a bandwidth reading before and after.
    key = "matvec GB/s (numpy fp32, 96 MiB)"
    limits[key] = max(limits[key], machine.matvec_gbs())
    section = render(sampling, detok, loop, chat_times, limits)
    print(section)
    if not args.quick:
        write_section(section)


if __name__ == "__main__":
    main()
