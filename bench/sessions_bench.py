"""Session store benchmark: rebuild from disk, search, listing and durable appends at thousands of sessions.

    python -m bench.sessions_bench          # 1k / 3k / 10k sessions; writes docs/benchmarks.md "## Sessions"
    python -m bench.sessions_bench --quick  # 1k sessions, no docs update

Sessions are synthetic but shaped like real ones: a title, 6 messages of ~60 words drawn from a Zipf-like
vocabulary mixed with code identifiers. Everything runs against a private redis-server (unix socket) and a
temp data dir. Raw limits measured in the same run: a Redis round trip (PING), pipelined ZINCRBY/s (the
operation the search index is made of), and the latency of a small append + fsync (what recording a
message costs at least).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import redis

from bench import machine
from bench.private_redis import start_redis
from bench.report import write_section
from sessions import ids
from sessions.log import encode, header_record, message_record
from sessions.model import Message, Session
from sessions.search import terms
from sessions.store import SessionStore

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## Sessions"
QUERIES = [
    "parse_config",
    "tokenizer segfault",
    "w3",
    "retry backoff websocket",
    "HTTPServerError",
    "w1 w2 w40",
]
IDENTIFIERS = ["parse_config", "HTTPServerError", "load_model", "retry", "backoff", "websocket", "tokenizer",
               "segfault", "KVCache", "blockStore", "render_chat", "sampling"]  # fmt: skip


def write_sessions(root: Path, n: int, seed: int = 1) -> int:
    """n session logs under root; returns the (session, term) pairs the index will hold."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(5000)] + IDENTIFIERS
    weights = [1 / (i + 1) for i in range(5000)] + [0.01] * len(IDENTIFIERS)
    pairs = 0
    for _ in range(n):
        now = time.time()
        title = " ".join(rng.choices(vocab, weights, k=6))
        s = Session(id=ids.new_id(), title=title, created=now, updated=now, repo="/bench/repo", model="bench")
        texts = [" ".join(rng.choices(vocab, weights, k=60)) for _ in range(6)]
        records = [header_record(s)] + [
            message_record(i, Message(role="user", content=t)) for i, t in enumerate(texts)
        ]
        (root / f"{s.id}.jsonl").write_bytes(b"".join(encode(r) for r in records))
        pairs += len(Counter(terms(" ".join([s.title, *texts]))))
    return pairs


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def time_calls(fn: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def fsync_append_s(directory: Path, repeat: int = 50) -> float:
    """Median latency of a 200-byte append + fsync in `directory` (a message record's size)."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def append() -> None:
        os.write(fd, b"x" * 200 + b"\n")
        os.fsync(fd)

    try:
        return statistics.median(time_calls(append, repeat))
    finally:
        os.close(fd)
        path.unlink()


def raw_limits(r: redis.Redis) -> dict[str, float]:
    ping = statistics.median(time_calls(r.ping, 500))
    pipe = r.pipeline(transaction=False)
    for i in range(100_000):
        pipe.zincrby(f"bench:t:{i % 5000}", 1, f"s{i}")
    t0 = time.perf_counter()
    pipe.execute()
    zincr = 100_000 / (time.perf_counter() - t0)
    r.flushall()
    return {"ping_s": ping, "zincrby_per_s": zincr}


def bench_size(r: redis.Redis, n: int) -> dict[str, float]:
    r.flushall()
    home = Path(tempfile.mkdtemp(prefix="wb-sessions-bench-"))
    root = home / "sessions"
    root.mkdir()
    pairs = write_sessions(root, n)
    t0 = time.perf_counter()
    store = SessionStore(r, root)
    rebuild = time.perf_counter() - t0
    # What every later process pays on start: checking that Redis reflects every log (nothing to rebuild).
    startup = statistics.median(time_calls(lambda: SessionStore(r, root), 3))
    search = [t for q in QUERIES for t in time_calls(lambda q=q: store.search(q, limit=20), 5)]
    listing = time_calls(lambda: store.list(limit=50), 20)
    some_id = store.list(limit=1)[0].id
    resolve = time_calls(lambda: store.resolve(some_id[:10]), 20)
    s = store.load(some_id)
    appends = time_calls(lambda: store.append_message(s, Message(role="user", content="one more retry")), 50)
    fsync = fsync_append_s(root)  # right after, on the same file system and the same load
    shutil.rmtree(home, ignore_errors=True)
    return {
        "sessions": n,
        "pairs": pairs,
        "rebuild_s": rebuild,
        "startup_s": startup,
        "search_p50": percentile(search, 0.5),
        "search_p95": percentile(search, 0.95),
        "list_p50": percentile(listing, 0.5),
        "resolve_p50": percentile(resolve, 0.5),
        "append_p50": percentile(appends, 0.5),
        "fsync_s": fsync,
    }


def report(rows: list[dict[str, float]], raw: dict[str, float], limits_md: str) -> str:
    lines = [
        HEADING,
        "",
        "`python -m bench.sessions_bench` — the session store on a private redis-server (unix socket) and "
        "a temp data dir. Synthetic sessions: a 6-word title and 6 messages of 60 words (Zipf-like "
        "vocabulary plus code identifiers). Search = BM25 over the Redis inverted index + snippets of "
        "the top 20.",
        "",
        "| sessions | rebuild from disk | index pairs/s | open (no rebuild) | search p50 | search p95 "
        "| list 50 p50 | resolve prefix | append msg (fsync) | bare append + fsync |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['sessions']:,} | {row['rebuild_s']:.2f} s | {row['pairs'] / row['rebuild_s']:,.0f} | "
            f"{row['startup_s'] * 1e3:.0f} ms | "
            f"{row['search_p50'] * 1e3:.1f} ms | {row['search_p95'] * 1e3:.1f} ms | "
            f"{row['list_p50'] * 1e3:.1f} ms | "
            f"{row['resolve_p50'] * 1e3:.2f} ms | {row['append_p50'] * 1e3:.2f} ms | "
            f"{row['fsync_s'] * 1e3:.2f} ms |"
        )
    last = rows[-1]
    index_ratio = last["pairs"] / last["rebuild_s"] / raw["zincrby_per_s"]
    lines += [
        "",
        f"Load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (the machine is "
        "shared). Raw limits measured in the same run: Redis round trip (PING) "
        f"{raw['ping_s'] * 1e6:.0f} µs; pipelined ZINCRBY {raw['zincrby_per_s']:,.0f}/s; a bare 200-byte "
        "append + fsync is measured beside each row.",
        "",
        f"Ratios at {last['sessions']:,} sessions: search p50 = "
        f"{last['search_p50'] / raw['ping_s']:.0f} Redis round trips; recording a message = "
        f"{last['append_p50'] / last['fsync_s']:.2f}x a bare append + fsync; rebuild indexes "
        f"{index_ratio:.2f}x the raw "
        "pipelined ZINCRBY rate (each (session, term) pair is one ZINCRBY, run server-side in Lua).",
        "",
        limits_md,
        "",
    ]
    return "\n".join(lines)


def update_doc(section: str) -> None:
    write_section(section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1k sessions only; do not touch docs")
    args = parser.parse_args()
    sizes = [1000] if args.quick else [1000, 3000, 10_000]
    directory = Path(tempfile.mkdtemp(prefix="wb-sessions-bench-redis-"))
    proc, r = start_redis(directory, "--appendonly", "no", "--maxmemory", "10gb",
                          "--maxmemory-policy", "volatile-lru")  # fmt: skip
    try:
        raw = raw_limits(r)
        rows = []
        for n in sizes:
            rows.append(bench_size(r, n))
            print(rows[-1], flush=True)
        limits_md = machine.limits_table(machine.measure_limits(r, directory))
        section = report(rows, raw, limits_md)
        print(section)
        if not args.quick:
            update_doc(section)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
