"""Where a resumed turn's time goes: restore, then prefilling the few new tokens (issue 20's profile).

    flock /tmp/workbench-bench.lock python -m bench.resume_profile [--tokens 6080] [--new 49,66]

One cold prefill of a history on Qwen3-0.6B's exact shapes (random bfloat16 weights) is saved to a
disk tier; then each case runs in a fresh process (what `workbench --resume ID` is): load the model,
restore the history, prefill `new` tokens on top. The prefill is split into the time spent growing
the cache (KVCache._fresh_page), in attention (sdpa) and in the rest (the weights' products); a
reference prefills the same number of tokens into an empty cache (the cost that does not depend on
the history).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import machine
from bench.engine_bench import QWEN3_06B, prompt_ids, write_random_checkpoint
from bench.report import worker_result


def _timed_calls(owner: Any, name: str, totals: dict[str, float]) -> None:
    """Wrap owner.name so the seconds spent inside it add up in totals[name]."""
    inner: Callable = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - t0

    setattr(owner, name, timed)


def worker(model_dir: str, kv_dir: str, n: str, new: str, restore: str) -> None:
    import engine
    from engine.backends import numpy_backend
    from engine.cache import KVCache
    from kvstore import BlockStore, space_of
    from kvstore.tiers import DiskTier

    model = engine.load_model(model_dir, backend="numpy")
    ids = prompt_ids(int(n), QWEN3_06B["vocab_size"]) + prompt_ids(int(new), QWEN3_06B["vocab_size"])
    cache = model.make_cache()
    res_s, cached = 0.0, 0
    if restore == "yes":
        store = BlockStore([DiskTier(Path(kv_dir), budget_bytes=64 << 30)])
        res = store.restore(space_of(model), cache, ids[: int(n)])
        res_s, cached = res.restore_s, res.cached_tokens
        store.close()
    capacity_before = cache.capacity()
    totals: dict[str, float] = {}
    _timed_calls(KVCache, "_fresh_page", totals)
    _timed_calls(numpy_backend, "sdpa", totals)
    t0 = time.perf_counter()
    model.forward(ids[cached : cached + int(new)] if cached else ids[: int(new)], cache)
    prefill_s = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "restore_s": res_s,
                "cached": cached,
                "capacity_before": capacity_before,
                "capacity_after": cache.capacity(),
                "prefill_s": prefill_s,
                "new_pages_s": totals.get("_fresh_page", 0.0),
                "sdpa_s": totals.get("sdpa", 0.0),
            }
        )
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(*sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=6080)
    p.add_argument("--new", default="49,66")
    p.add_argument("--dir", help="keep the checkpoint and the saved blocks here (reused when present)")
    args = p.parse_args()
    print(json.dumps({"machine": machine.measure_limits()}), flush=True)
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(args.dir or tmp_s)
        if not (tmp / "kv").exists():
            prepare(tmp, args.tokens)
        for new in args.new.split(","):
            for restore in ("yes", "no"):
                out = worker_result(
                    "bench.resume_profile",
                    "--worker",
                    [str(tmp / "model"), str(tmp / "kv"), str(args.tokens), new, restore],
                )
                print(json.dumps({"new": int(new), "restored": restore, **out}), flush=True)


def prepare(tmp: Path, tokens: int) -> None:
    """A random Qwen3-0.6B checkpoint in tmp/model and a prefilled history of `tokens` in tmp/kv."""
    import engine
    from kvstore import BlockStore, space_of
    from kvstore.tiers import DiskTier

    write_random_checkpoint(tmp / "model", QWEN3_06B)
    model = engine.load_model(str(tmp / "model"), backend="numpy")
    ids = prompt_ids(tokens, QWEN3_06B["vocab_size"])
    cache = model.make_cache()
    t0 = time.perf_counter()
    model.forward(ids, cache)
    print(json.dumps({"cold_prefill_s": time.perf_counter() - t0, "tokens": tokens}), flush=True)
    store = BlockStore([DiskTier(tmp / "kv", budget_bytes=64 << 30)])
    store.save(space_of(model), cache, ids)
    store.close()
    del cache, model


if __name__ == "__main__":
    main()
