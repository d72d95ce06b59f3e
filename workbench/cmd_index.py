"""`workbench index [PATH] [--watch] [--status]` and `workbench search QUERY|- [PATH]`: the live code index.

PATH (or `--repo PATH`, the older spelling) is the repository, `.` by default, as `git` and `rg` take
it. `search -` reads one query per line from stdin and answers each with one JSON line (scripted
evaluation). A pass that runs longer than a couple of seconds shows its progress on stderr at a terminal
(workbench/index_progress.py); a first pass of a home directory or `/` needs `--yes`.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from core.errors import UsageError

if TYPE_CHECKING:
    from indexer import Hit, Index, UpdateStats
    from workbench.index_progress import TerminalProgress


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="index a repository for retrieval (incremental); --watch keeps it live")
    p.add_argument("repo_path", nargs="?", default=None, metavar="PATH", help="repository (default: .)")
    p.add_argument("--repo", default=None, metavar="PATH", help="the same as PATH")
    p.add_argument("--watch", action="store_true", help="stay running and apply file changes as they happen")
    p.add_argument("--status", action="store_true", help="print the index status (files, chunks, pending)")
    p.add_argument("--yes", action="store_true", help="index even a home directory or / (asked otherwise)")
    p.add_argument("--json", action="store_true", help="JSON output (one line per update with --watch)")
    p.set_defaults(func=run_index)

    s = sub.add_parser("search", help="hybrid (vector + lexical) search of the repository's index")
    s.add_argument("query", help='the query, or "-" to read one query per line from stdin (JSON lines out)')
    s.add_argument("repo_path", nargs="?", default=None, metavar="PATH", help="repository (default: .)")
    s.add_argument("--k", type=int, default=8, metavar="N", help="results per query (default 8)")
    s.add_argument("--path", default=None, metavar="GLOB", help='only paths matching GLOB ("src/**", "*.py")')
    s.add_argument("--lang", default=None, metavar="L", help="only chunks of language L (python, go, ...)")
    s.add_argument("--mode", choices=("hybrid", "vector", "lexical"), default="hybrid", help="ranking signal")
    s.add_argument("--repo", default=None, metavar="PATH", help="the same as PATH")
    s.add_argument("--no-update", action="store_true", help="search the index as it is (no refresh first)")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=run_search)


def repo_arg(args: argparse.Namespace) -> str:
    """The repository from PATH or --repo (both may be given only if they agree)."""
    if args.repo_path is not None and args.repo is not None and args.repo_path != args.repo:
        given = f"PATH {args.repo_path!r} and --repo {args.repo!r}"
        raise UsageError(f"two repositories given: {given}; give one")
    return args.repo_path or args.repo or "."


def _open(args: argparse.Namespace) -> Index:
    from indexer import Index

    return Index.open(repo_arg(args))


def _progress(ix: Index, quiet: bool) -> TerminalProgress:
    from workbench.index_progress import TerminalProgress

    return TerminalProgress(f"indexing {ix.root}", quiet=quiet)


def run_index(args: argparse.Namespace) -> int:
    ix = _open(args)
    if args.status:
        status = {"repo": str(ix.root), "index": ix.id, "model": ix.model_id, **ix.status()}
        print(json.dumps(status) if args.json else "\n".join(f"{k}: {v}" for k, v in status.items()))
        return 0
    ix.check_root(confirm=args.yes)
    if args.watch:
        return _watch(ix, args.json)
    show = _progress(ix, quiet=args.json)
    try:
        stats = ix.update(progress=show, confirm=True)
    finally:
        show.clear()
    _print_stats(ix, stats, args.json)
    return 0


def _watch(ix: Index, as_json: bool) -> int:
    """The first pass runs in the watcher, whose observer starts before it: an edit made during that
    pass is queued and applied right after it, never lost."""
    from indexer.watch import Watcher

    show = _progress(ix, quiet=as_json)

    def updated(stats: UpdateStats) -> None:
        show.clear()
        _print_stats(ix, stats, as_json)

    # Ctrl-C and SIGTERM stop it, handled here rather than as KeyboardInterrupt: a process started with
    # SIGINT ignored (in the background of a non-interactive shell, as CI runs do) never gets one.
    stopping = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stopping.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    watcher = Watcher(ix, on_update=updated, progress=show, confirm=True)
    watcher.start()
    if not as_json:
        print(f"watching {ix.root} (Ctrl-C to stop)", file=sys.stderr)
    try:
        while not stopping.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        watcher.stop()
        show.clear()
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
    ix = _open(args)
    if not args.no_update:
        show = _progress(ix, quiet=args.json or args.query == "-")
        try:
            stats = ix.update(progress=show)
        finally:
            show.clear()
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
