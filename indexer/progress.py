"""Progress of an index pass, for a terminal line (the CLI) or events (the session service).

`Index.update(progress=callback)` calls `callback(Progress)` from the updating thread: once per phase
change, at most every `INTERVAL_S` within a phase, and once with phase "done". A callback must return
quickly (it runs between file reads and write groups) and must not call back into the index.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

Phase = Literal["waiting", "reading", "embedding", "done"]
INTERVAL_S = 0.2


@dataclass(frozen=True)
class Progress:
    """Where a pass is. `reading`: files read and chunked so far of `files_total`; `embedding`: files
    written (`files_done`) and chunks embedded or reused (`chunks_done` of `chunks_total`); `waiting`:
    another process holds the index's writer lease (`holder` says who)."""

    phase: Phase
    files_done: int = 0
    files_total: int = 0
    chunks_done: int = 0
    chunks_total: int = 0
    elapsed_s: float = 0.0  # since the pass started (including any wait)
    rate: float = 0.0  # chunks/s over the embedding phase so far (0 before the first write group)
    eta_s: float | None = None  # seconds left at that rate; None while unknown
    holder: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ProgressCallback = Callable[[Progress], None]


class Meter:
    """Builds Progress reports for one pass and hands them to the callback, throttled."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        self.callback = callback
        self.t0 = time.monotonic()
        self._embed_t0: float | None = None
        self._embed_base = 0  # chunks done before the embedding clock started
        self._last_phase: Phase | None = None
        self._last_t = 0.0

    def waiting(self, holder: str) -> None:
        self._emit(Progress("waiting", elapsed_s=self._elapsed(), holder=holder))

    def reading(self, done: int, total: int) -> None:
        self._emit(Progress("reading", files_done=done, files_total=total, elapsed_s=self._elapsed()))

    def embedding(self, files_done: int, files_total: int, chunks_done: int, chunks_total: int) -> None:
        now = time.monotonic()
        if self._embed_t0 is None:
            self._embed_t0, self._embed_base = now, chunks_done
        span = now - self._embed_t0
        rate = (chunks_done - self._embed_base) / span if span > 0 else 0.0
        left = chunks_total - chunks_done
        eta = left / rate if rate > 0 else (0.0 if left == 0 else None)
        self._emit(Progress("embedding", files_done, files_total, chunks_done, chunks_total,
                            self._elapsed(), rate, eta), force=chunks_done >= chunks_total)  # fmt: skip

    def done(self, files: int, chunks: int) -> None:
        self._emit(Progress("done", files, files, chunks, chunks, self._elapsed(), eta_s=0.0), force=True)

    def _elapsed(self) -> float:
        return time.monotonic() - self.t0

    def _emit(self, report: Progress, force: bool = False) -> None:
        if self.callback is None:
            return
        now = time.monotonic()
        if not force and report.phase == self._last_phase and now - self._last_t < INTERVAL_S:
            return
        self._last_phase, self._last_t = report.phase, now
        self.callback(report)
