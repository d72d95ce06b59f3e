"""Progress of an index pass: the callback's reports, and the terminal line drawn from them."""

from __future__ import annotations

import io
from pathlib import Path

import redis

from indexer import Index
from indexer.index import shared_encoder
from indexer.progress import Progress
from tests.indexer_support import write_many
from workbench.index_progress import CLEAR, TerminalProgress


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_pass_reports_reading_then_embedding_then_done(tmp_path: Path, redis_client: redis.Redis) -> None:
    ix = Index.open(write_many(tmp_path / "repo", 40), redis_client, encoder=shared_encoder())
    reports: list[Progress] = []
    stats = ix.update(progress=reports.append)
    phases = [p.phase for p in reports]
    assert phases[0] == "reading" and phases[-1] == "done" and "embedding" in phases
    assert phases.index("embedding") > max(i for i, p in enumerate(phases) if p == "reading")
    embedding = [p for p in reports if p.phase == "embedding"]
    assert [p.chunks_done for p in embedding] == sorted(p.chunks_done for p in embedding)
    assert embedding[-1].chunks_done == embedding[-1].chunks_total == stats.chunks_added == 80
    assert embedding[-1].files_done == 40 and embedding[-1].rate > 0 and embedding[-1].eta_s == 0


def test_the_line_appears_after_two_seconds_on_a_terminal_only() -> None:
    step = Progress("embedding", 312, 1479, 893, 4120, elapsed_s=0.5, rate=18.3, eta_s=176.0)
    late = Progress("embedding", 312, 1479, 893, 4120, elapsed_s=2.5, rate=18.3, eta_s=176.0)
    tty = Tty()
    show = TerminalProgress("indexing /r", stream=tty)
    show(step)
    assert tty.getvalue() == ""  # a short pass stays silent
    show(late)
    assert (
        tty.getvalue()
        == CLEAR + "indexing /r: 312/1,479 files · 893/4,120 chunks · 18.3 chunks/s · ETA 2m56s"
    )
    show(Progress("done", elapsed_s=3.0))
    assert tty.getvalue().endswith(CLEAR)  # cleared for the summary line
    for stream, quiet in ((io.StringIO(), False), (Tty(), True)):  # a pipe, or --json
        TerminalProgress("indexing /r", stream=stream, quiet=quiet)(late)
        assert stream.getvalue() == ""


def test_a_wait_is_said_once_when_not_a_terminal() -> None:
    pipe = io.StringIO()
    show = TerminalProgress("indexing /r", stream=pipe)
    for _ in range(3):
        show(Progress("waiting", holder="pid 42 on host h (indexing /r), for 3 s"))
    assert pipe.getvalue().count("waiting for the index writer, pid 42 on host h") == 1
