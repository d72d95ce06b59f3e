"""Each benchmark owns one `## ` section of docs/benchmarks.md and rewrites only that section."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DOC = ROOT / "docs" / "benchmarks.md"


def worker_result(module: str, flag: str, args: list[str]) -> dict:
    """`python -m module flag *args` in a fresh process; its last stdout line is its JSON result.
    Raises RuntimeError with the worker's last stderr line if it fails."""
    proc = subprocess.run(
        [sys.executable, "-m", module, flag, *args], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"{module} {flag} failed ({proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_section(section: str, doc: Path = BENCH_DOC) -> None:
    """Replace the section whose heading is `section`'s first line (or append it), keeping the others."""
    heading = section.lstrip("\n").splitlines()[0].strip()
    if not heading.startswith("## "):
        raise ValueError(f"a benchmark section starts with its '## ' heading, not {heading!r}")
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == heading), None)
    body = section.strip("\n").splitlines()
    if start is None:
        lines += ["", *body]
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[start:end] = [*body, ""] if end < len(lines) else body
    doc.write_text("\n".join(lines).rstrip("\n") + "\n")


def quick_or_full_main(description: str, run: Callable[[bool], str]) -> None:
    """The command line of a benchmark with a `--quick` mode: print its section, and record it in
    docs/benchmarks.md only after a full run (a quick one is a smoke test, not a figure to quote)."""
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=description, formatter_class=raw)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, printed and not recorded")
    args = parser.parse_args()
    section = run(args.quick)
    print(section)
    if not args.quick:
        write_section(section)
