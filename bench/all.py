"""Run every benchmark in turn (`make bench`); each prints its table and the machine's limits.

python -m bench.all            # full runs; each updates its section of docs/benchmarks.md
python -m bench.all --quick    # short runs, docs untouched
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

BENCHMARKS = [
    "bench.machine",
    "bench.engine_bench",
    "bench.gen_bench",
    "bench.kv_bench",
    "bench.index_bench",
    "bench.sessions_bench",
    "bench.headless_bench",
]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    parser.add_argument("--only", nargs="*", default=None, help="module names to run (e.g. bench.kv_bench)")
    args = parser.parse_args()
    failed = []
    for module in args.only or BENCHMARKS:
        extra = ["--quick"] if args.quick and module != "bench.machine" else []
        print(f"\n=== {module} {' '.join(extra)}", flush=True)
        t0 = time.monotonic()
        # One process per benchmark: each measures its own peak RSS and starts from a cold cache.
        code = subprocess.call([sys.executable, "-m", module, *extra])
        print(f"=== {module}: exit {code} in {time.monotonic() - t0:.0f} s", flush=True)
        if code:
            failed.append(module)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
