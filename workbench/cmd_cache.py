"""`workbench cache stats|gc|clear`: the KV block store (disk and Redis tiers, shared hit counters)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvstore import BlockStore


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cache", help="the KV block cache: stats, gc, clear")
    actions = p.add_subparsers(title="actions", metavar="ACTION", required=True)
    stats = actions.add_parser("stats", help="blocks and bytes per tier, hit rate")
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    stats.set_defaults(func=run_stats)
    gc = actions.add_parser("gc", help="delete blocks no session references")
    gc.add_argument(
        "--grace",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="keep unreferenced blocks used within this many seconds (default 300: a running session's "
        "newest blocks may not be pinned yet)",
    )
    gc.add_argument("--json", action="store_true")
    gc.set_defaults(func=run_gc)
    clear = actions.add_parser("clear", help="delete every KV block (disk and Redis) and the counters")
    clear.add_argument("--json", action="store_true")
    clear.set_defaults(func=run_clear)


def _store() -> BlockStore:
    from kvstore.open import open_block_store

    return open_block_store(shared_only=True)  # this process's memory tier would hold nothing


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def cache_stats() -> dict:
    return _store().stats()


def run_stats(args: argparse.Namespace) -> int:
    data = cache_stats()
    if args.json:
        print(json.dumps(data))
        return 0
    print(f"block size {data['block_size']} tokens; {data['pinned_sessions']} sessions pinned")
    for name, s in data["tiers"].items():
        budget = f" of {_human(s['budget_bytes'])}" if "budget_bytes" in s else ""
        print(f"  {name:<6} {s['blocks']:>7} blocks  {_human(s['bytes']):>10}{budget}")
    c = data["counters"]
    if data["hit_rate"] is None:
        print("hit rate: no restores yet")
    else:
        by_tier = ", ".join(
            f"{t} {c.get(f'hit_tokens_{t}', 0)}"
            for t in ("memory", "disk", "redis")
            if c.get(f"hit_tokens_{t}")
        )
        hits, lookups = c.get("hit_tokens", 0), c.get("lookup_tokens", 0)
        print(
            f"hit rate {data['hit_rate']:.1%}: {hits} of {lookups} tokens "
            f"from cache over {c.get('restores', 0)} restores ({by_tier or 'none'}); "
            f"{c.get('dropped_blocks', 0)} bad blocks dropped"
        )
    return 0


def run_gc(args: argparse.Namespace) -> int:
    removed = _store().gc(grace_s=args.grace)
    if args.json:
        print(json.dumps({"removed": removed}))
    else:
        print("removed " + ", ".join(f"{n} blocks from {tier}" for tier, n in removed.items()))
    return 0


def run_clear(args: argparse.Namespace) -> int:
    before = _store().clear()
    if args.json:
        print(json.dumps({"removed": before}))
    else:
        print("cleared " + ", ".join(f"{n} blocks from {tier}" for tier, n in before.items()))
    return 0
