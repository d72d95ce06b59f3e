"""Serving throughput and time to first token: in-process turns, the stream protocol, the HTTP door.

    flock /tmp/workbench-bench.lock python -m bench.serve_bench          # table + docs/benchmarks.md
    flock /tmp/workbench-bench.lock python -m bench.serve_bench --quick  # fewer requests, no docs update

Loopback only, bounded (a fixed number of requests per case, a deadline for the run). A private
redis-server on a unix socket, a fresh data dir, the tiny random-weight Qwen3 with the real chat template
(tests/headless_support.py), numpy. The same prompts and `max_tokens` on every path:
  - in-process: `SessionService.start_turn` in this process (the baseline);
  - stream: `start_remote_turn` to one `workbench serve` worker process (XADD -> XREADGROUP -> reply stream);
  - HTTP: the official `openai` client streaming from `workbench serve --http` (one uvicorn process).
With 1, 2 and 4 concurrent clients (threads), each sending its requests one after another. TTFT is from
the call to the first text delta. Then shared-prefix vs cold TTFT through HTTP, and a worker SIGKILLed
under load with two workers (lost requests counted). The machine's limits and the transports' own
round trips are measured in the same run.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import machine
from bench.private_redis import start_redis
from bench.report import quick_or_full_main

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## Serve: stream protocol and HTTP door (issue 19)"
MAX_TOKENS = 16
CLIENTS = (1, 2, 4)
SYSTEM = "You are a careful coding assistant. Answer briefly and cite the files you use. " * 40


def prompt(n: int) -> str:
    return f"Question {n}: where is the parser, and what does it return?"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def concurrent(clients: int, per_client: int, one: Callable[[int], float]) -> dict[str, float]:
    """`clients` threads each run `one(n)` (returning its TTFT) `per_client` times; req/s and TTFTs."""
    ttfts: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def client(c: int) -> None:
        start.wait()
        for i in range(per_client):
            ttft = one(c * 1000 + i)
            with lock:
                ttfts.append(ttft)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    wall = time.perf_counter() - t0
    return {"rps": len(ttfts) / wall, "p50": pct(ttfts, 0.5) * 1000, "p95": pct(ttfts, 0.95) * 1000,
            "n": len(ttfts)}  # fmt: skip


def in_process(svc: Any, model: str) -> Callable[[int], float]:
    from sessions import TurnOptions
    from sessions.events import TextDelta

    def one(n: int) -> float:
        t0 = time.perf_counter()
        ttft = None
        for event in svc.start_turn(None, prompt(n), TurnOptions(**turn_options(model))):
            if ttft is None and isinstance(event, TextDelta):
                ttft = time.perf_counter() - t0
        return ttft if ttft is not None else float("nan")

    return one


def turn_options(model: str) -> dict[str, Any]:
    return {"model": model, "repo": str(ROOT), "rag": False, "temperature": 0.0, "max_tokens": MAX_TOKENS}


def stream(client: Any, model: str) -> Callable[[int], float]:
    from serve.client import start_remote_turn

    def one(n: int) -> float:
        t0 = time.perf_counter()
        ttft = None
        for event in start_remote_turn(client, prompt(n), None, turn_options(model)):
            if ttft is None and event.data["type"] == "delta":
                ttft = time.perf_counter() - t0
        return ttft if ttft is not None else float("nan")

    return one


def http(base: str, model: str, system: Callable[[int], str] | None = None,
         cached: list[int] | None = None) -> Callable[[int], float]:  # fmt: skip
    import openai

    client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=120)

    def one(n: int) -> float:
        messages = [{"role": "user", "content": prompt(n)}]
        if system is not None:
            messages.insert(0, {"role": "system", "content": system(n)})
        t0 = time.perf_counter()
        ttft = None
        for chunk in client.chat.completions.create(model=model, messages=messages, temperature=0,
                                                    max_tokens=MAX_TOKENS, stream=True):  # fmt: skip
            if ttft is None and chunk.choices and chunk.choices[0].delta.content:
                ttft = time.perf_counter() - t0
            if chunk.usage is not None and cached is not None:
                cached.append(chunk.usage.prompt_tokens_details.cached_tokens)
        return ttft if ttft is not None else float("nan")

    return one


def spawn(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "workbench", "serve", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(base: str, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"the HTTP door at {base} did not come up")


def round_trips(client: Any, base: str) -> dict[str, float]:
    """The transports' floors: a Redis PING, an XADD answered through XREAD, a GET /v1/models."""
    import httpx

    def best(fn: Callable[[], Any], n: int = 200) -> float:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1000

    def xadd_xread() -> None:
        client.xadd("wb:bench:rt", {"x": "1"}, maxlen=1)
        client.xread({"wb:bench:rt": "0-0"}, count=1)

    with httpx.Client() as h:
        models = best(lambda: h.get(f"{base}/models"), 100)
    out = {"ping_ms": best(client.ping), "xadd_xread_ms": best(xadd_xread), "http_models_ms": models}
    client.delete("wb:bench:rt")
    return out


def worker_kill(client: Any, env: dict[str, str], model: str, requests: int) -> dict[str, float]:
    """Two workers; `requests` queued; one SIGKILLed once replies flow; count the answers."""
    from serve import protocol
    from serve.protocol import Request

    workers = [spawn(env, "--name", f"kill-w{i}", "--claim-idle-ms", "1000") for i in (1, 2)]
    try:
        ids = [f"kill-{i}" for i in range(requests)]
        for rid in ids:  # a longer reply, so the kill lands mid-request
            protocol.submit(
                client, Request(rid, prompt(len(rid)), None, {**turn_options(model), "max_tokens": 64})
            )
        t0 = time.perf_counter()
        for event in protocol.replies(client, ids[0], timeout_s=120):
            if event["type"] == "delta":
                break
        workers[0].send_signal(signal.SIGKILL)
        for rid in ids:
            list(protocol.replies(client, rid, timeout_s=120))  # until its result
        wall = time.perf_counter() - t0
        events = {rid: [e[b"event"] for _, e in client.xrange(protocol.reply_key(rid))] for rid in ids}
        requeued = sum(1 for evs in events.values() for e in evs if b'"requeued"' in e)
        answers = [[e for e in evs if b'"type": "result"' in e] for evs in events.values()]
        answered = sum(1 for a in answers if len(a) == 1 and b'"is_error": false' in a[0])
        return {"requests": requests, "answered": answered, "lost": requests - answered, "requeued": requeued,
                "wall_s": wall}  # fmt: skip
    finally:
        for w in workers:
            if w.poll() is None:
                w.terminate()
                w.wait(timeout=30)


def run(quick: bool) -> str:
    from core import redis_server
    from sessions import SessionService
    from tests.headless_support import chat_model_dir

    per_client = 2 if quick else 8
    deadline = time.monotonic() + 420  # the run stays under the 8 minutes a bench may take
    rows: list[tuple[str, int, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="wb-serve-bench-") as tmp:
        root = Path(tmp)
        proc, client = start_redis(root)
        env = {**os.environ, "REDIS_URL": f"unix://{root / 'redis.sock'}", "HF_HUB_OFFLINE": "1",
               "WORKBENCH_HOME": str(root / "home"), "PYTHONPATH": str(ROOT)}  # fmt: skip
        os.environ.update({k: env[k] for k in ("REDIS_URL", "WORKBENCH_HOME", "HF_HUB_OFFLINE")})
        redis_server.reset_clients()
        model = str(chat_model_dir(root / "models"))
        port = free_port()
        base = f"http://127.0.0.1:{port}/v1"
        worker = spawn(env, "--name", "bench-w1", "--claim-idle-ms", "5000")
        door = spawn(env, "--http", f"127.0.0.1:{port}", "--serve-model", model, "--max-concurrent", "16")
        svc = SessionService(client)
        try:
            wait_http(base)
            paths = {
                "in-process": in_process(svc, model),
                "stream": stream(client, model),
                "HTTP": http(base, model),
            }
            for name, one in paths.items():
                one(-1)  # loads the model in that process
                for clients in CLIENTS:
                    if time.monotonic() < deadline:
                        rows.append((name, clients, concurrent(clients, per_client, one)))
            cached: list[int] = []
            cold = concurrent(1, per_client, http(base, model, lambda n: f"Session {n}. " + SYSTEM))
            http(base, model, lambda n: SYSTEM)(-2)  # the shared prefix, saved once
            warm = concurrent(1, per_client, http(base, model, lambda n: SYSTEM, cached))
            limits = round_trips(client, base)
        finally:
            svc.close(timeout=30)
            for p in (worker, door):
                p.terminate()
                p.wait(timeout=30)
        kill = worker_kill(client, env, model, 4 if quick else 8)
        table = machine.limits_table(redis_client=client)
        proc.terminate()
        proc.wait(timeout=30)
    return render(quick, per_client, rows, cold, warm, cached, limits, kill, table)


def render(quick: bool, per_client: int, rows: list, cold: dict, warm: dict, cached: list[int],
           limits: dict, kill: dict, table: str) -> str:  # fmt: skip
    base = {c: r for name, c, r in rows if name == "in-process"}
    lines = [
        HEADING,
        "",
        f"`python -m bench.serve_bench` ({'quick' if quick else 'full'}; loopback; private redis-server on a "
        f"unix socket; tiny random-weight Qwen3 with the real chat template, numpy; {MAX_TOKENS} new tokens "
        f"per request; each client sends {per_client} requests one after another, new sessions for the "
        f"in-process and stream paths; TTFT from the call to the first text delta). Load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs.",
        "",
        "| path | clients | requests | req/s | p50 TTFT ms | p95 TTFT ms | req/s vs in-process |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, clients, r in rows:
        ratio = r["rps"] / base[clients]["rps"] if clients in base else float("nan")
        lines.append(f"| {name} | {clients} | {r['n']} | {r['rps']:.1f} | {r['p50']:.0f} | {r['p95']:.0f} | "
                     f"{ratio:.2f} |")  # fmt: skip
    lines += [
        "",
        "| HTTP, 1 client, a long system prompt | p50 TTFT ms | p95 TTFT ms | cached prompt tokens |",
        "| --- | ---: | ---: | ---: |",
        f"| cold (a different system prompt each time) | {cold['p50']:.0f} | {cold['p95']:.0f} | 0 |",
        f"| shared prefix (saved by an earlier request) | {warm['p50']:.0f} | {warm['p95']:.0f} | "
        f"{statistics.median(cached) if cached else 0:.0f} |",
        "",
        f"Worker kill: {kill['requests']} requests queued to two `workbench serve` workers, one SIGKILLed "
        f"once replies flowed: {kill['answered']} answered exactly once, **{kill['lost']} lost**, "
        f"{kill['requeued']} re-run by the other worker after `--claim-idle-ms 1000`; all done in "
        f"{kill['wall_s']:.1f} s.",
        "",
        f"Transport floors in the same run (medians): Redis PING {limits['ping_ms']:.3f} ms, XADD + XREAD "
        f"{limits['xadd_xread_ms']:.3f} ms, HTTP GET /v1/models {limits['http_models_ms']:.2f} ms.",
        "",
        table,
    ]
    return "\n".join(lines)


def main() -> None:
    quick_or_full_main(__doc__.splitlines()[0], run)


if __name__ == "__main__":
    main()
