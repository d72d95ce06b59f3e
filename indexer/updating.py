"""One update pass of an index: its statistics, its write groups, and what can end it early."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from core.errors import WorkbenchError
from core.lease import Lease
from indexer.progress import Meter
from indexer.store import FilePlan

# Files embedded and written together. Small groups keep memory bounded and progress steady, and
# bound what a killed pass loses: every group written before the kill is kept (its files' manifests
# say so) and the next pass reuses it; only the group being embedded is done again.
FILES_PER_WRITE_GROUP = 64
CHUNKS_PER_WRITE_GROUP = 32  # about four encoder batches (embed.TOKENS_PER_BATCH) of full chunks


@dataclass
class UpdateStats:
    files_seen: int = 0
    files_unchanged: int = 0
    files_changed: int = 0
    files_removed: int = 0
    files_skipped: int = 0
    chunks_added: int = 0
    chunks_removed: int = 0
    chunks_reattributed: int = 0
    chunks_embedded: int = 0
    vectors_reused: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class UpdateCancelled(WorkbenchError):
    """`Index.update` was cancelled; files written before stay written."""

    exit_code = 130


class LeaseLost(WorkbenchError):
    """The writer lease lapsed during a pass (the process stalled past it): stop before writing more."""


@dataclass
class Pass:
    """What one update pass carries through its phases."""

    meter: Meter
    lease: Lease
    cancel: threading.Event | None

    def check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise UpdateCancelled("index update cancelled")
        if self.lease.lost.is_set():
            raise LeaseLost(f"{self.lease.key}: the writer lease lapsed mid-pass; run the update again")


def write_groups(plans: list[FilePlan]) -> Iterable[list[FilePlan]]:
    """Consecutive plans cut into groups of at most CHUNKS_PER_WRITE_GROUP chunks to embed (a bigger
    file is a group of its own) and FILES_PER_WRITE_GROUP files."""
    group: list[FilePlan] = []
    chunks = 0
    for plan in plans:
        if group and (chunks + len(plan.add) > CHUNKS_PER_WRITE_GROUP or len(group) >= FILES_PER_WRITE_GROUP):
            yield group
            group, chunks = [], 0
        group.append(plan)
        chunks += len(plan.add)
    if group:
        yield group
