"""KV block benchmark: cold prefill vs resume from disk and from Redis, on Qwen3-0.6B's exact shapes.

    python -m bench.kv_bench            # 1k/2k/4k/8k histories, writes docs/benchmarks.md "## KV blocks"
    python -m bench.kv_bench --quick    # 512/1k histories, short quality run, no docs update

Cold prefill is measured once, on the longest history, by timing each 512-token prefill chunk: the time
at which the cache holds L tokens (and the logits of position L are out) is the cold time to first token
of a history of L tokens. That slightly overstates cold TTFT: every chunk computes its last logits
(one lm_head matvec, ~0.05 s) where a real prefill computes them once.

Resume: a fresh process-free state each time: a store with ONE tier (no memory tier), a new cache, and
for disk the block files' pages dropped from the OS page cache (posix_fadvise DONTNEED after fsync;
`--keep-page-cache` skips that). Redis is a private redis-server on a unix socket started by this run.
Restore throughput = block bytes / restore time, beside the raw tier throughput over the same bytes:
reading the same files (page cache dropped) into a buffer, and GETting the same keys.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import redis

from bench import machine
from bench.engine_bench import QWEN3_06B, prompt_ids, write_random_checkpoint
from bench.kv_quality import dtype_agreement
from bench.kv_report import HEADING, render
from bench.private_redis import start_redis
from bench.report import worker_result, write_section
from kvstore.space import space_of
from kvstore.store import DEFAULT_BLOCK_SIZE, BlockStore
from kvstore.tiers import DiskTier
from kvstore.tiers.redis import BLOCK_PREFIX, RedisTier

ROOT = Path(__file__).resolve().parent.parent
BENCH_DOC = ROOT / "docs" / "benchmarks.md"
CHUNK = 512
RESUME_REPS = 2


def cold_prefill(model: Any, ids: list[int], lengths: list[int]) -> tuple[Any, dict, dict]:
    """One prefill of the longest history; (cache, seconds to reach each length, logits at it)."""
    cache = model.make_cache()
    cold, logits = {}, {}
    t0 = time.perf_counter()
    for start in range(0, max(lengths), CHUNK):
        last = model.forward(ids[start : start + CHUNK], cache)
        if start + CHUNK in lengths:
            cold[start + CHUNK] = time.perf_counter() - t0
            logits[start + CHUNK] = last
            print(f"cold prefill {start + CHUNK} tokens: {cold[start + CHUNK]:.1f} s", flush=True)
    return cache, cold, logits


def first_touch_gbs(mib: int = 512) -> float:
    """Writing freshly allocated memory (page faults included): what filling a new KV cache costs."""
    t0 = time.perf_counter()
    buf = np.empty(mib << 18, dtype=np.float32)
    buf.fill(1.0)
    return buf.nbytes / (time.perf_counter() - t0) / 1e9


def raw_disk_gbs(tier: DiskTier, keys: list[str]) -> float:
    tier.drop_page_cache()
    paths = [tier._path(k) for k in keys]
    buf = bytearray(max(p.stat().st_size for p in paths))
    total = 0
    t0 = time.perf_counter()
    for p in paths:
        with open(p, "rb", buffering=0) as fh:
            total += fh.readinto(buf)
    return total / (time.perf_counter() - t0) / 1e9


def raw_redis_gbs(client: redis.Redis, keys: list[str]) -> float:
    total = 0
    t0 = time.perf_counter()
    for k in keys:
        total += len(client.get(BLOCK_PREFIX + k.encode()))
    return total / (time.perf_counter() - t0) / 1e9


def resume(model: Any, store: BlockStore, ids: list[int], expect_logits: np.ndarray) -> dict:
    """Best of RESUME_REPS restores, each from scratch (new cache, page cache dropped), in the process
    that prefilled: as a session's next turn or a resume in a running app, the cache's arrays come
    from the model's pool. A new process's first restore is measured apart (`new_process_resume`)."""
    disk = next((t for t in store.tiers if isinstance(t, DiskTier)), None)
    best = None
    for _ in range(RESUME_REPS):
        if disk is not None and not ARGS.keep_page_cache:
            disk.drop_page_cache()
        cache = model.make_cache()
        res = store.restore(space_of(model), cache, ids)
        del cache
        if res.cached_tokens != len(ids) or res.last_logits is None:
            raise RuntimeError(f"resume restored {res.cached_tokens} of {len(ids)} tokens")
        if best is None or res.restore_s < best.restore_s:
            best = res
    return {
        "ttft_s": best.restore_s,
        "gbs": best.bytes_read / best.restore_s / 1e9,
        "bytes": best.bytes_read,
        "same_first_token": int(np.argmax(best.last_logits)) == int(np.argmax(expect_logits)),
        "max_logit_err": float(np.abs(best.last_logits - expect_logits).max()),
    }


def new_process_resume(model_dir: Path, kv_dir: Path, n: int, dtype: str, bs: int) -> dict:
    """`workbench --resume` in a new terminal: a new process loads the model, then restores n tokens
    from disk (page cache dropped) into memory it has never touched."""
    return worker_result(
        "bench.kv_bench", "--new-process-worker", [str(model_dir), str(kv_dir), str(n), dtype, str(bs)]
    )


def new_process_worker(model_dir: str, kv_dir: str, n: str, dtype: str, bs: str) -> None:
    import engine

    t0 = time.perf_counter()
    model = engine.load_model(model_dir, backend="numpy")
    load_s = time.perf_counter() - t0
    disk = DiskTier(Path(kv_dir), budget_bytes=64 << 30)
    disk.drop_page_cache()
    store = BlockStore([disk], block_size=int(bs), dtype=dtype)
    ids = prompt_ids(int(n), QWEN3_06B["vocab_size"])  # the history the parent saved: its longest
    res = store.restore(space_of(model), model.make_cache(), ids)
    if res.cached_tokens != len(ids):
        raise RuntimeError(f"new-process resume restored {res.cached_tokens} of {len(ids)} tokens")
    print(json.dumps({"load_s": load_s, "restore_s": res.restore_s, "bytes": res.bytes_read}))


def run_tier(
    model: Any,
    tier: Any,
    dtype: str,
    bs: int,
    cache: Any,
    ids: list[int],
    logits: dict,
    new_process: Callable[[], dict] | None = None,
) -> dict:
    store = BlockStore([tier], block_size=bs, dtype=dtype)
    t0 = time.perf_counter()
    for n in sorted(logits):
        store.save(space_of(model), cache, ids[:n], logits[n])
    store.flush()
    out: dict[str, Any] = {"save_s": time.perf_counter() - t0, "resume": {}}
    for n in sorted(logits):
        out["resume"][n] = resume(model, store, ids[:n], logits[n])
        print(f"  {tier.name} {dtype} bs={bs} {n}: {out['resume'][n]}", flush=True)
    if new_process is not None:
        out["new_process"] = new_process()
        print(
            f"  {tier.name} {dtype} bs={bs} {max(logits)} in a new process: {out['new_process']}", flush=True
        )
    keys = store.session_keys(space_of(model), ids[: max(logits)])[:-1]
    if isinstance(tier, DiskTier):
        out["raw_gbs"] = raw_disk_gbs(tier, keys)
    else:
        out["raw_gbs"] = raw_redis_gbs(tier.client, keys)
    out["bytes_per_token"] = out["resume"][max(logits)]["bytes"] / max(logits)
    store.close()
    tier.clear()
    return out


def _int_keys(x: Any) -> Any:
    """JSON turned the history lengths into strings: turn them back."""
    if isinstance(x, dict):
        return {int(k) if isinstance(k, str) and k.isdigit() else k: _int_keys(v) for k, v in x.items()}
    return x


def render_saved(path: Path) -> None:
    """Re-render (and write) the docs section from a saved run: `--render /tmp/kv_bench.json`."""
    results = _int_keys(json.loads(path.read_text()))
    section = render(results, results["limits"])
    print(section)
    if not ARGS.no_docs:
        write_section(section)
        print(f"wrote {BENCH_DOC} ({HEADING})")


def main() -> None:
    global ARGS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="512/1k histories, 16 quality tokens, no docs update")
    p.add_argument("--lengths", default="1024,2048,4096,8192")
    p.add_argument("--block-sizes", default="16,32,64,128,256", help="sweep at --sweep-length ('' skips)")
    p.add_argument("--sweep-length", type=int, default=2048)
    p.add_argument("--dtypes", default="float32,float16,int8")
    p.add_argument("--quality-tokens", type=int, default=256, help="0 skips the int8/float16 quality run")
    p.add_argument("--keep-page-cache", action="store_true")
    p.add_argument("--no-docs", action="store_true")
    p.add_argument("--render", type=Path, help="only re-render the docs section from a saved results file")
    p.add_argument("--new-process-worker", nargs=5, help=argparse.SUPPRESS)
    ARGS = p.parse_args()
    if ARGS.new_process_worker:
        new_process_worker(*ARGS.new_process_worker)
        return
    if ARGS.render:
        render_saved(ARGS.render)
        return
    if ARGS.quick:
        ARGS.lengths, ARGS.block_sizes, ARGS.sweep_length, ARGS.quality_tokens = "512,1024", "32,64", 1024, 16
    lengths = [int(x) for x in ARGS.lengths.split(",")]
    if any(n % CHUNK for n in lengths):
        p.error(f"--lengths must be multiples of {CHUNK}")
    import engine

    with tempfile.TemporaryDirectory(prefix="wb-kv-bench-") as tmp_name:
        tmp = Path(tmp_name)
        proc, client = start_redis(tmp, "--appendonly", "no", "--maxmemory", "10gb",
                                   "--maxmemory-policy", "volatile-lru")  # fmt: skip
        try:
            write_random_checkpoint(tmp / "model", QWEN3_06B)
            model = engine.load_model(str(tmp / "model"), backend="numpy")
            ids = prompt_ids(max(lengths), QWEN3_06B["vocab_size"])
            load_cold = os.getloadavg()[0]
            cache, cold, logits = cold_prefill(model, ids, sorted({*lengths, ARGS.sweep_length}))
            load_cold = max(load_cold, os.getloadavg()[0])
            results: dict[str, Any] = {
                "block_size": DEFAULT_BLOCK_SIZE,
                "tiers": {},
                "sweep": {},
                "quality": [],
            }
            results["cold"] = {n: cold[n] for n in lengths}
            main_logits = {n: logits[n] for n in lengths}

            def tiers() -> list[Any]:
                return [DiskTier(tmp / "kv", budget_bytes=64 << 30), RedisTier(client, ttl_s=3600)]

            def fresh_resume() -> dict:
                return new_process_resume(
                    tmp / "model", tmp / "kv", max(lengths), "float32", DEFAULT_BLOCK_SIZE
                )

            for dtype in ARGS.dtypes.split(","):
                results["tiers"][dtype] = {
                    t.name: run_tier(
                        model, t, dtype, DEFAULT_BLOCK_SIZE, cache, ids, main_logits,
                        fresh_resume if (dtype, t.name) == ("float32", "disk") else None,
                    )
                    for t in tiers()
                }  # fmt: skip
            n = ARGS.sweep_length
            results["sweep_length"] = n
            for size in [int(x) for x in ARGS.block_sizes.split(",") if x]:
                results["sweep"][size] = {
                    t.name: run_tier(model, t, "float32", size, cache, ids, {n: logits[n]}) for t in tiers()
                }
            del cache
            if ARGS.quality_tokens:
                for dtype in ("float16", "int8"):
                    q = dtype_agreement(model, ids[:512], dtype, ARGS.quality_tokens, DEFAULT_BLOCK_SIZE)
                    print(q, flush=True)
                    results["quality"].append(q)
            limits = machine.measure_limits(client, directory=tmp)
            limits["fresh memory first write GB/s (512 MiB)"] = first_touch_gbs()
            results["load"] = {"cold_prefill": load_cold, "end": os.getloadavg()[0]}
            results["limits"] = limits
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    (tmp_json := Path(tempfile.gettempdir()) / "kv_bench.json").write_text(json.dumps(results, indent=1))
    section = render(results, limits)
    print(section)
    print(f"raw results: {tmp_json}")
    if not ARGS.quick and not ARGS.no_docs:
        write_section(section)
        print(f"wrote {BENCH_DOC} ({HEADING})")


ARGS = argparse.Namespace()

if __name__ == "__main__":
    main()
