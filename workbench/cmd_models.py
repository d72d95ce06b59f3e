"""`workbench models list|pull`: which models are local, and downloading one from the Hugging Face Hub."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="local models (list) and downloads (pull)")
    actions = p.add_subparsers(title="actions", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="models in the Hugging Face cache and in WORKBENCH_HOME/models")
    listing.add_argument("--json", action="store_true", help="one JSON array of models")
    listing.set_defaults(func=run_list)
    pull = actions.add_parser("pull", help="download a model (weights, config, tokenizer) from the Hub")
    pull.add_argument("repo_id", metavar="REPO_ID", help="a Hugging Face repo id, e.g. Qwen/Qwen3-0.6B")
    pull.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    pull.set_defaults(func=run_pull)


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def run_list(args: argparse.Namespace) -> int:
    # engine is imported here, not at module level: `workbench --help` must not pay for numpy.
    from engine import hub

    models = hub.list_local()
    if args.json:
        print(json.dumps([m.to_dict() for m in models]))
        return 0
    if not models:
        print(
            f"no local models (looked in {hub.hf_cache_dir()} and {hub.workbench_models_dir()}); "
            f"get the default one with `workbench models pull {hub.DEFAULT_MODEL}`"
        )
        return 0
    rows = [
        (
            m.name + (" (default)" if m.name == hub.DEFAULT_MODEL else ""),
            m.architecture,
            f"{m.weight_format} {_human_size(m.weight_bytes)}" if m.weight_bytes else m.weight_format,
            _human_size(m.size_bytes),
            m.source,
            str(m.path),
        )
        for m in models
    ]
    header = ("NAME", "ARCHITECTURE", "WEIGHTS", "SIZE", "SOURCE", "PATH")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1])
    return 0


def run_pull(args: argparse.Namespace) -> int:
    from engine import hub

    print(f"downloading {args.repo_id} into {hub.hf_cache_dir()}", file=sys.stderr)
    path = hub.pull(args.repo_id, revision=args.revision)
    print(f"{args.repo_id} is ready at {path}")
    return 0
