"""What the headless CLI costs on top of the work it asks for: process start, listing, a turn's first token.

    python -m bench.headless_bench            # prints the tables, writes docs/benchmarks.md "## Headless CLI"
    python -m bench.headless_bench --quick    # fewer repetitions, no docs update

Runs real `python -m workbench` processes against a private redis-server and a temp data dir, with the
tiny random-weight Qwen3 of tests/fixtures (needs the dev extras: torch, transformers). Every figure is
quoted against a baseline measured in the same run: a bare `python -c pass` start, and the turn's own
time to first token as the service reports it (`timings.ttft_s`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import machine
from bench.private_redis import start_redis
from bench.report import quick_or_full_main

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## Headless CLI"
# Long enough (about 400 tokens) that a resumed turn restores whole 64-token KV blocks.
FIRST_PROMPT = " ".join(
    ["Explain how the parser reads a config file and reports the line of each error."] * 6
)
SESSIONS = 300  # sessions added before timing `sessions list` and `sessions search`


def best_wall(cmd: list[str], env: dict[str, str], n: int) -> float:
    """Fastest of n runs, seconds (the machine is shared: the least disturbed run measures the code)."""
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, check=True)
        best = min(best, time.perf_counter() - t0)
    return best


def first_delta(cmd: list[str], env: dict[str, str]) -> tuple[float, float, dict]:
    """(seconds to the first `delta` line, seconds to exit, the result object) of a stream-json turn."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None
    first, last = None, {}
    for line in proc.stdout:
        event = json.loads(line)
        if event["type"] == "delta" and first is None:
            first = time.perf_counter() - t0
        last = event
    proc.wait()
    if proc.returncode != 0 or first is None:
        raise RuntimeError(f"turn failed ({proc.returncode}): {last}")
    return first, time.perf_counter() - t0, last


def fill_store(env: dict[str, str], model: str, repo: str, count: int) -> int:
    """Add `count` one-turn sessions through the service, in this process; returns how many are stored."""
    os.environ.update(env)
    from sessions import SessionService, TurnOptions

    with SessionService() as svc:
        for i in range(count):
            options = TurnOptions(model=model, repo=repo, rag=False, max_tokens=1, temperature=0.0)
            turn = svc.start_turn(None, f"question {i} about parsing the config file", options)
            result = turn.wait()
            if result is None or result.is_error:
                raise RuntimeError(f"filling the store failed: {result}")
            svc.close_session(turn.session_id)
        return len(svc.list())


def build_model(root: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from tests.fixtures.tiny_models import _SMALL, Spec, build_spec

    spec = Spec("qwen3", "qwen3", "v5", tied=False, sizes={**_SMALL, "max_position_embeddings": 4096})
    return build_spec("qwen3_bench", spec, root, seed=4242).path


def run(quick: bool) -> str:

    n = 3 if quick else 7
    with tempfile.TemporaryDirectory(prefix="wb-headless-bench-") as tmp:
        root = Path(tmp)
        model = build_model(root / "models")
        server, _ = start_redis(root, "--appendonly", "no")
        try:
            env = {**os.environ, "REDIS_URL": f"unix://{root / 'redis.sock'}", "HF_HUB_OFFLINE": "1",
                   "WORKBENCH_HOME": str(root / "home"), "PYTHONPATH": str(ROOT)}  # fmt: skip
            return measure(env, str(model), root, n)
        finally:
            server.terminate()
            server.wait(timeout=10)


def measure(env: dict[str, str], model: str, root: Path, n: int) -> str:
    wb = [sys.executable, "-m", "workbench"]
    bare = best_wall([sys.executable, "-c", "pass"], env, n)
    helps = best_wall([*wb, "--help"], env, n)
    empty_list = best_wall([*wb, "sessions", "list", "--json"], env, n)
    repo = root / "repo"
    repo.mkdir()
    turn = [*wb, "--model", model, "--repo", str(repo), "--no-rag", "--temperature", "0",
            "--output-format", "stream-json"]  # fmt: skip
    cold = [first_delta([*turn, "-p", FIRST_PROMPT, "--max-tokens", "16"], env) for _ in range(n)]
    sid = cold[0][2]["session_id"]
    resumed = [
        first_delta([*turn, "--resume", sid, "-p", "and then?", "--max-tokens", "16"], env) for _ in range(n)
    ]
    stored = fill_store(env, model, str(repo), SESSIONS)
    big_list = best_wall([*wb, "sessions", "list", "--json"], env, n)
    search = best_wall([*wb, "sessions", "search", "parsing", "--json"], env, n)

    def row(name: str, runs: list[tuple[float, float, dict]]) -> str:
        best = min(runs, key=lambda r: r[0])
        ttft = best[2]["timings"]["ttft_s"]
        return (f"| {name} | {best[0] * 1000:.0f} | {ttft * 1000:.1f} | {(best[0] - ttft) * 1000:.0f} | "
                f"{best[1] * 1000:.0f} | {best[2]['tokens']['cached']} |")  # fmt: skip

    load = os.getloadavg()[0]  # the machine is shared: say how busy it was
    limits = machine.measure_limits()
    lines = [
        HEADING,
        "",
        f"`python -m bench.headless_bench` ({'quick' if n < 7 else 'full'}; best of {n}; tiny random-weight "
        "Qwen3 from tests/fixtures, numpy backend, private redis-server). What a `workbench` process costs "
        f"beyond the work it asks for. Load average during the run: {load:.1f} on {os.cpu_count()} CPUs.",
        "",
        "| process | wall ms | vs bare `python -c pass` |",
        "| --- | --- | --- |",
        f"| `python -c pass` | {bare * 1000:.0f} | 1.0x |",
        *(
            f"| {name} | {wall * 1000:.0f} | {wall / bare:.1f}x |"
            for name, wall in (
                ("`workbench --help`", helps),
                ("`workbench sessions list --json` (empty store)", empty_list),
                (f"`workbench sessions list --json` ({stored} sessions)", big_list),
                (f"`workbench sessions search parsing --json` ({stored} sessions)", search),
            )
        ),
        "",
        "| `-p` turn, stream-json | first delta ms | service ttft ms | start-up + model load ms | exit ms "
        "| cached tok |",
        "| --- | --- | --- | --- | --- | --- |",
        row("new session, first run (nothing cached)", cold[:1]),
        row("new session, same prompt again (blocks shared across sessions)", cold[1:]),
        row("`--resume` (KV blocks reused)", resumed),
        "",
        "Start-up + model load = first delta seen by the caller minus the service's own time to first token: "
        "interpreter start, imports, Redis connect, session lookup and loading the model's weights.",
        "",
        "Machine limits measured in the same run:",
        "",
        machine.limits_table(limits),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    quick_or_full_main(__doc__ or "", run)


if __name__ == "__main__":
    main()
