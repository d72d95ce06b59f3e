"""First frame of the Workbench TUI beside a bare Textual app, measured in the same run.

Each sample is a fresh process (`python -c ...`) that starts the app headless; on its first `on_ready`
(the first frame is composed and painted) it prints the wall clock and exits. The figure is that clock
minus the one taken just before the spawn, so interpreter start and imports count, as they do for a
user, and what runs after the first frame (the workers that connect Redis and load the engine, and
their shutdown) does not. Samples alternate (bare, workbench, ...).

    python -m bench.tui_bench [--rounds N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BARE = """
from textual.app import App
from textual.widgets import Footer, Static
import time
class Bare(App):
    def compose(self):
        yield Static("hello"); yield Footer()
    def on_ready(self):
        print(time.time(), flush=True)
        self.exit()
Bare().run(headless=True)
"""

WORKBENCH = """
import sys
import time
from pathlib import Path
from workbench.tui.app import WorkbenchApp
from workbench.tui.backend import Backend, LaunchOptions
class FirstFrame(WorkbenchApp):
    def on_ready(self):
        print(time.time(), flush=True)
        self.exit()
    async def on_unmount(self):
        pass  # nothing was opened: leave Redis alone
home = Path(sys.argv[1])
opts = LaunchOptions(repo=str(home), model=str(home / "no-model"), watch_index=False)
FirstFrame(Backend(opts), home / "data").run(headless=True)
"""


def sample(code: str, *args: str) -> float:
    """Seconds from spawn to the first frame (or, for code that prints nothing, to exit)."""
    start = time.time()
    done = subprocess.run([sys.executable, "-c", code, *args], check=True, cwd=ROOT, capture_output=True)
    printed = done.stdout.split()
    return (float(printed[-1]) if printed else time.time()) - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="wb-tui-bench-")
    python_start = [sample("pass") for _ in range(3)]
    bare, workbench = [], []
    for _ in range(args.rounds):
        bare.append(sample(BARE))
        workbench.append(sample(WORKBENCH, home))
    b, w, p = statistics.median(bare), statistics.median(workbench), statistics.median(python_start)
    print(f"| first frame (spawn to first on_ready, median of {args.rounds}) | seconds |")
    print("| --- | ---: |")
    print(f"| machine: `python -c pass` | {p:.3f} |")
    print(f"| bare Textual app | {b:.3f} (min {min(bare):.3f}) |")
    print(f"| Workbench TUI | {w:.3f} (min {min(workbench):.3f}) |")
    print(f"| ratio Workbench / bare (target <= 1.5) | {w / b:.2f}x |")


if __name__ == "__main__":
    main()
