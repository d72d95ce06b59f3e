"""`workbench index [--watch] [--status]` and `workbench search QUERY|-`: the live code index.

`search -` reads one query per line from stdin and answers each with one JSON line (scripted evaluation).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from core.errors import UsageError

if TYPE_CHECKING:
    from indexer import Hit, Index, UpdateStats


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="index a repository for retrieval (incremental); --watch keeps it live")
    p.add_argument("--repo", default=".", metavar="PATH", help="repository to index (default: .)")
    p.add_argument("--watch", action="store_true", help="stay running and apply file changes as they happen")
    p.add_argument("--status", action="store_true", help="print the index status (files, chunks, pending)")
    p.add_argument("--json", action="store_true", help="JSON output (one line per update with --watch)")
    p.set_defaults(func=run_index)

    s = sub.add_parser("search", help="hybrid (vector + lexical) search of the repository's index")
    s.add_argument("query", help='the query, or "-" to read one query per line from stdin (JSON lines out)')
    s.add_argument("--k", type=int, default=8, metavar="N", help="results per query (default 8)")
    s.add_argument("--path", default=None, metavar="GLOB", help='only paths matching GLOB ("src/**", "*.py")')
    s.add_argument("--lang", default=None, metavar="L", help="only chunks of language L (python, go, ...)")
    s.add_argument("--mode", choices=("hybrid", "vector", "lexical"), default="hybrid", help="ranking signal")
    s.add_argument("--repo", default=".", metavar="PATH", help="repository (default: .)")
    s.add_argument("--no-update", action="store_true", help="search the index as it is (no refresh first)")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=run_search)


def _open(repo: str) -> Index:
    from indexer import Index

    return Index.open(repo)


def run_index(args: argparse.Namespace) -> int:
    ix = _open(args.repo)
    if args.status:
        status = {"repo": str(ix.root), "index": ix.id, "model": ix.model_id, **ix.status()}
        print(json.dumps(status) if args.json else "\n".join(f"{k}: {v}" for k, v in status.items()))
        return 0
    stats = ix.update()
    _print_stats(ix, stats, args.json)
    if not args.watch:
        return 0
    return _watch(ix, args.json)


def _watch(ix: Index, as_json: bool) -> int:
    from indexer.watch import Watcher

    watcher = Watcher(ix, initial_update=False, on_update=lambda st: _print_stats(ix, st, as_json))
    watcher.start()
    if not as_json:
        print(f"watching {ix.root} (Ctrl-C to stop)", file=sys.stderr)
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        watcher.stop()
    return 0


def _print_stats(ix: Index, stats: UpdateStats, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"repo": str(ix.root), "index": ix.id, **stats.to_dict()}), flush=True)
        return
    print(
        f"{ix.root}: {stats.files_seen} files seen, {stats.files_changed} changed, {stats.files_removed} "
        f"removed, {stats.files_skipped} skipped; {stats.chunks_added} chunks added "
        f"({stats.chunks_embedded} embedded, {stats.vectors_reused} reused), {stats.chunks_removed} removed "
        f"in {stats.seconds:.2f} s",
        flush=True,
    )


def run_search(args: argparse.Namespace) -> int:
    if args.k <= 0:
        raise UsageError(f"--k must be positive, got {args.k}")
    ix = _open(args.repo)
    if not args.no_update:
        stats = ix.update()
        if stats.files_changed or stats.files_removed:
            print(f"index refreshed: {stats.files_changed} files changed, {stats.files_removed} removed "
                  f"({stats.seconds:.1f} s)", file=sys.stderr)  # fmt: skip
    if args.query == "-":
        for line in sys.stdin:
            query = line.strip()
            if not query:
                continue
            hits = ix.search(query, k=args.k, path_glob=args.path, lang=args.lang, mode=args.mode)
            print(json.dumps(_answer(query, hits)), flush=True)
        return 0
    hits = ix.search(args.query, k=args.k, path_glob=args.path, lang=args.lang, mode=args.mode)
    if args.json:
        print(json.dumps(_answer(args.query, hits)))
        return 0
    if not hits:
        print("no results", file=sys.stderr)
    for hit in hits:
        symbol = f"  {hit.symbol}" if hit.symbol else ""
        first = next((ln.strip() for ln in hit.text.splitlines() if ln.strip()), "")
        print(f"{hit.path}:{hit.start_line}-{hit.end_line}{symbol}  ({hit.score:.4f})\n    {first[:100]}")
    return 0


def _answer(query: str, hits: list[Hit]) -> dict[str, Any]:
    return {"query": query, "hits": [h.to_dict() for h in hits]}
