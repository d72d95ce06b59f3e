"""The terminal side of `indexer.progress`: one status line on stderr, rewritten in place.

A pass that ends within `DELAY_S` prints nothing (a refresh that found nothing to do stays silent);
a longer one shows files, chunks, rate and ETA. Not a terminal, or `--json`: no line at all, except
that a wait for another writer is said once (on a terminal it is the line itself).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:  # the CLI imports this module at start: it must not load the indexer
    from indexer.progress import Progress

DELAY_S = 2.0
CLEAR = "\r\x1b[K"


class TerminalProgress:
    """A `ProgressCallback` drawing one line on `stream` (stderr by default)."""

    def __init__(self, label: str, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.live = not quiet and _isatty(self.stream)
        self.quiet = quiet
        self.drawn = False
        self._told_wait = False

    def __call__(self, p: Progress) -> None:
        if p.phase == "waiting":
            self._wait(p)
        elif p.phase == "done":
            self.clear()
        elif self.live and p.elapsed_s >= DELAY_S:
            self._draw(describe(self.label, p))

    def clear(self) -> None:
        if self.drawn:
            self.stream.write(CLEAR)
            self.stream.flush()
            self.drawn = False

    def _wait(self, p: Progress) -> None:
        text = f"{self.label}: waiting for the index writer, {p.holder} (Ctrl-C to stop)"
        if self.live:
            self._draw(text)
        elif not self.quiet and not self._told_wait:
            print(f"workbench: {text}", file=self.stream, flush=True)
            self._told_wait = True

    def _draw(self, text: str) -> None:
        self.stream.write(CLEAR + text)
        self.stream.flush()
        self.drawn = True


def describe(label: str, p: Progress) -> str:
    """`label: 312/1,479 files · 893/4,120 chunks · 18.3 chunks/s · ETA 2m56s`."""
    if p.phase == "reading":
        return f"{label}: reading {p.files_done:,}/{p.files_total:,} files"
    parts = [f"{label}: {p.files_done:,}/{p.files_total:,} files"]
    parts.append(f"{p.chunks_done:,}/{p.chunks_total:,} chunks")
    if p.rate > 0:
        parts.append(f"{p.rate:.1f} chunks/s")
    if p.eta_s is not None and p.rate > 0:
        parts.append(f"ETA {duration(p.eta_s)}")
    return " · ".join(parts)


def duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
