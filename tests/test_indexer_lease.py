"""One writer per index, and what a `kill -9` of `workbench index` mid-pass leaves: the next pass takes
over at once, the status says the pass was interrupted, and every file written before the kill is kept
(its vectors are not embedded again). Real subprocesses, real Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from indexer import Index
from indexer.index import shared_encoder
from tests.indexer_support import write_many
from workbench.cli import main

FILES = 200  # ~400 chunks: a pass of several seconds on two cores


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def start_index(repo: Path) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "workbench", "index", str(repo), "--json"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def repo(tmp_path: Path, redis_client: redis.Redis) -> Path:
    return write_many(tmp_path / "repo", FILES)


def test_after_kill_9_mid_pass_the_next_pass_takes_over_and_reuses_what_was_written(
    repo: Path, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    ix = Index.open(repo, redis_client, encoder=shared_encoder())
    proc = start_index(repo)
    try:
        wait_for(lambda: redis_client.hlen(ix.store.files_key) >= 10)  # some write groups are in
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    written = sorted(ix.store.manifests())
    chunks_written = ix.store.counts()[1]
    assert 10 <= len(written) < FILES, "the kill must land mid-pass"
    # The dead writer's lease is still there (it would lapse only after its TTL) ...
    assert json.loads(redis_client.get(ix.store.prefix + "lock"))["pid"] == proc.pid
    # ... and the status does not claim a pass is running.
    assert main(["index", str(repo), "--status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["state"] == "interrupted" and f"pid {proc.pid}" in status["note"]

    t0 = time.monotonic()
    assert main(["index", str(repo), "--json"]) == 0
    out, err = capsys.readouterr()
    stats = json.loads(out)
    assert "waiting" not in err, "a dead holder on this host is taken over at once"
    assert stats["files_unchanged"] >= len(written)
    # Only what the killed pass had not written is embedded: files written before the kill are
    # whole (one MULTI/EXEC per file), so none of their chunks is embedded again.
    assert stats["chunks_embedded"] == 2 * FILES - chunks_written
    assert ix.status()["state"] == "idle" and sorted(ix.store.manifests()) == sorted(
        str(p.relative_to(repo)) for p in repo.rglob("*.py")
    )
    print(f"killed after {len(written)} files; second pass {time.monotonic() - t0:.1f} s")


def test_a_second_writer_says_it_waits_and_for_whom(
    repo: Path, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    ix = Index.open(repo, redis_client, encoder=shared_encoder())
    first = start_index(repo)
    try:
        lock = ix.store.prefix + "lock"
        wait_for(lambda: redis_client.get(lock) is not None)
        assert main(["index", str(repo)]) == 0  # waits for the first, then finds nothing to do
        err = capsys.readouterr().err
        assert f"waiting for the index writer, pid {first.pid} on host" in err
        assert first.wait(timeout=120) == 0
        assert json.loads(first.stdout.read())["files_changed"] == FILES  # type: ignore[union-attr]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


def test_a_killed_watcher_is_reported_stopped(repo: Path, redis_client: redis.Redis) -> None:
    ix = Index.open(repo, redis_client, encoder=shared_encoder())
    ix.store.set_status(state="watching")
    assert ix.status()["state"] == "watching"  # this process is alive
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    redis_client.hset(ix.store.status_key, "pid", int(dead.stdout))
    assert ix.status()["state"] == "stopped" and os.getpid() != int(dead.stdout)
