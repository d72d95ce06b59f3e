"""Does the session service keep an event loop responsive, and how fast does a cancel land?

    python -m bench.service_bench          # prints the table, writes docs/benchmarks.md "## Session service"
    python -m bench.service_bench --quick  # fewer repetitions, no docs update

In-process, with no REDIS_URL: the service starts its embedded redis-server in a temp data dir, so the
Redis start it must not wait for is a real one. An asyncio loop ticks every millisecond throughout; its
longest gap is what a TUI would have felt. The tiny random-weight Qwen3 of tests/fixtures, numpy. Baselines
measured in the same run: the Redis start itself (`svc.wait_ready()`), one decode step.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import machine
from bench.report import quick_or_full_main

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## Session service"
LONG_PROMPT = "Explain how the parser reads a config file and reports the line of each error. " * 120


def build_model(root: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from tests.fixtures.tiny_models import _SMALL, Spec, build_spec

    spec = Spec("qwen3", "qwen3", "v5", tied=False, sizes={**_SMALL, "max_position_embeddings": 8192})
    return build_spec("qwen3_service_bench", spec, root, seed=4243).path


async def one_run(model: str) -> dict[str, float]:
    from core import redis_server
    from sessions import SessionService, TurnOptions
    from sessions.events import Prefill, TextDelta

    gaps: list[float] = []
    stop = asyncio.Event()

    async def tick() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.01)
    t0 = time.perf_counter()
    svc = SessionService()
    built = time.perf_counter() - t0
    options = TurnOptions(model=model, rag=False, temperature=0.0, max_tokens=4000)
    t1 = time.perf_counter()
    long = svc.start_turn(None, LONG_PROMPT, options)
    started = time.perf_counter() - t1
    still_starting = not svc.ready  # the two calls above really ran while Redis was starting
    await svc.ready_async()
    ready = time.perf_counter() - t0
    queued = svc.start_turn(None, "hello", options)
    await asyncio.sleep(0.05)
    t2 = time.perf_counter()
    queued.cancel()
    await queued.wait_async()
    cancel_queued = time.perf_counter() - t2
    prefill_times: list[float] = []
    deltas = 0
    async for event in long.events_async():
        if isinstance(event, Prefill):
            prefill_times.append(time.perf_counter())
        if isinstance(event, TextDelta):
            deltas += 1
            if deltas == 20:
                t3 = time.perf_counter()
                long.cancel()
    cancel_decode = time.perf_counter() - t3
    result = long.result
    step_s = 1 / result.timings["decode_tok_s"] if result.timings.get("decode_tok_s") else 0.0
    stop.set()
    await ticker
    svc.close(timeout=30)
    redis_server.stop_embedded()
    redis_server.reset_clients()
    return {
        "constructor_ms": built * 1000,
        "start_turn_ms": started * 1000,
        "while_starting": float(still_starting),
        "ready_ms": ready * 1000,
        "max_loop_gap_ms": max(gaps) * 1000,
        "cancel_queued_ms": cancel_queued * 1000,
        "cancel_decode_ms": cancel_decode * 1000,
        "decode_step_ms": step_s * 1000,
        "prefill_events": len(prefill_times),
        "prefill_tokens": result.tokens["prefilled"],
        "prefill_s": result.timings["prefill_s"],
    }


def run(quick: bool) -> str:
    n = 2 if quick else 5
    runs = []
    with tempfile.TemporaryDirectory(prefix="wb-service-bench-") as tmp:
        root = Path(tmp)
        model = str(build_model(root / "models"))
        os.environ.pop("REDIS_URL", None)
        for i in range(n):
            os.environ["WORKBENCH_HOME"] = str(root / f"home{i}")  # a fresh data dir: a real Redis start
            runs.append(asyncio.run(one_run(model)))
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    starting = sum(int(r["while_starting"]) for r in runs)
    load = os.getloadavg()[0]
    lines = [
        HEADING,
        "",
        f"`python -m bench.service_bench` ({'quick' if quick else 'full'}; median of {n} runs; each run "
        "starts the embedded redis-server in a fresh data dir; tiny random-weight Qwen3, numpy; an asyncio "
        f"loop ticks every 1 ms throughout). Load average: {load:.1f} on {os.cpu_count()} CPUs.",
        "",
        "| measure | ms | baseline in the same run |",
        "| --- | ---: | --- |",
        f"| `SessionService()` returns | {med['constructor_ms']:.2f} | "
        f"start-up done after {med['ready_ms']:.0f} ms |",
        f"| `start_turn` returns | {med['start_turn_ms']:.2f} | "
        f"Redis still starting in {starting} of {n} runs |",
        f"| longest event-loop gap, whole run | {med['max_loop_gap_ms']:.1f} | 1 ms tick |",
        f"| cancel of a queued turn -> its result | {med['cancel_queued_ms']:.1f} | |",
        f"| cancel during decode -> result | {med['cancel_decode_ms']:.1f} | "
        f"one decode step {med['decode_step_ms']:.1f} |",
        f"| prefill events for {med['prefill_tokens']:.0f} tokens | {med['prefill_events']:.0f} events | "
        f"prefill {med['prefill_s'] * 1000:.0f} ms |",
        "",
        machine.limits_table(),
    ]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    quick_or_full_main(__doc__.splitlines()[0], run)


if __name__ == "__main__":
    main()
