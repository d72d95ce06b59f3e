"""Never index a home directory or `/` without being asked.

`workbench search` and `workbench index` run where the user stands; a shell in `~` (or a container at
`/`) would otherwise start reading every file the user owns. A first full pass of such a root is
refused with what it would read (a count from a walk cut at `ESTIMATE_S`) and how to confirm; once an
index of it exists, that was the confirmation and later passes run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from core.errors import UsageError
from indexer.scan import IgnoreRules, scan

ESTIMATE_S = 2.0


class BroadRoot(UsageError):
    """The root is a home directory, one of its parents, or `/`: confirmation needed."""


def broad_root_reason(root: Path) -> str | None:
    """Why `root` is too broad to index unasked, or None."""
    real = Path(os.path.realpath(root))
    if real == Path(real.anchor):
        return "the filesystem root"
    try:
        home = Path(os.path.realpath(Path.home()))
    except RuntimeError:  # no home directory known
        return None
    if real == home:
        return "your home directory"
    if real in home.parents:
        return "a directory holding your home directory"
    return None


def estimate_files(root: Path, budget_s: float = ESTIMATE_S) -> str:
    """A count to show: "1,234 files" (a complete walk), or "more than 1,234 files" (cut at `budget_s`)."""
    result = scan(root, IgnoreRules(root), deadline=time.monotonic() + budget_s)
    n = f"{len(result.files):,} files"
    return n if result.complete else f"more than {n} (counted for {budget_s:.0f} s)"


def check_root(root: Path) -> None:
    """Raise BroadRoot, naming what would be indexed and how to confirm, for a too-broad `root`."""
    reason = broad_root_reason(root)
    if reason is None:
        return
    raise BroadRoot(
        f"{root} is {reason}: indexing it would read {estimate_files(root)}. Run `workbench index "
        f"{root} --yes` to index it anyway, or give the repository's own directory"
    )
