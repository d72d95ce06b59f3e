"""Persistence: the index survives a Redis restart with AOF exactly as it was, updates included, and a
watcher rides out a Redis restart without losing an update. Each test runs its own redis-server."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from core import redis_server
from indexer import Index
from indexer.index import shared_encoder
from indexer.watch import Watcher
from tests.indexer_support import expected_elements, vset_members, write_repo


def server_binary() -> str:
    """The redis-server the suite's own private server uses (found the way set-up finds it)."""
    return redis_server.find_server_binary()


class AofRedis:
    """A redis-server with appendonly yes in its own directory; restartable on the same socket."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="wb-aof-"))  # short: unix socket paths are limited
        self.socket = self.dir / "redis.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [server_binary(), "--port", "0", "--unixsocket", str(self.socket), "--dir", str(self.dir),
                "--save", "", "--appendonly", "yes", "--appendfsync", "always"]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis(unix_socket_path=str(self.socket)).ping():
                    return
            except (redis.ConnectionError, redis.exceptions.BusyLoadingError, OSError):
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on {self.socket}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: a clean shutdown
            self.proc.wait(timeout=10)
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket), socket_timeout=5)


@pytest.fixture
def aof_server() -> Iterator[AofRedis]:
    server = AofRedis()
    server.start()
    yield server
    server.stop()
    shutil.rmtree(server.dir, ignore_errors=True)


def snapshot(r: redis.Redis, ix: Index) -> dict[str, Any]:
    elements = sorted(vset_members(r, ix.store.vset))
    return {
        "elements": elements,
        "attributes": {e: r.vset().vgetattr(ix.store.vset, e) for e in elements},
        "vectors": {e: np.asarray(r.vset().vemb(ix.store.vset, e), dtype=np.float32) for e in elements},
        "files": r.hgetall(ix.store.files_key),
        "chunks": r.hgetall(ix.store.chunks_key),
    }


def test_index_survives_restart_with_aof_exactly_updates_included(
    aof_server: AofRedis, tmp_path: Path
) -> None:
    repo = write_repo(tmp_path / "repo")
    ix = Index.open(repo, aof_server.client(), encoder=shared_encoder())
    ix.update()
    # Updates of every kind: an edited chunk (VREM + VADD), lines shifted (VSETATTR), a delete, a rename.
    util = repo / "app" / "util.py"
    util.write_text(util.read_text().replace("a + b", "b + a"))
    server = repo / "app" / "server.py"
    server.write_text("# shifted\n" + server.read_text())
    (repo / "cmd" / "main.go").unlink()
    (repo / "web" / "cart.ts").rename(repo / "web" / "basket.ts")
    stats = ix.update()
    assert stats.chunks_reattributed > 0 and stats.chunks_removed > 0 and stats.chunks_added > 0
    before = snapshot(ix.redis, ix)
    assert set(before["elements"]) == expected_elements(repo, sorted(ix.store.manifests()))

    aof_server.stop()
    aof_server.start()
    after = snapshot(aof_server.client(), ix)
    assert after["elements"] == before["elements"]
    assert after["attributes"] == before["attributes"]
    for element in before["elements"]:
        np.testing.assert_allclose(after["vectors"][element], before["vectors"][element], atol=1e-6)
    assert after["files"] == before["files"] and after["chunks"] == before["chunks"]
    # Attributes really are the moved ones (the stale pre-update values did not come back).
    moved = [a for a in after["attributes"].values() if a["symbol"] == "parse_http_header"]
    assert [(a["start"], a["end"]) for a in moved] == [(20, 22)]


def test_watcher_survives_a_redis_restart_and_loses_no_update(aof_server: AofRedis, tmp_path: Path) -> None:
    repo = write_repo(tmp_path / "repo")
    ix = Index.open(repo, aof_server.client(), encoder=shared_encoder())
    watcher = Watcher(ix, debounce=0.05).start()
    try:
        assert watcher.wait_idle(60)
        aof_server.stop()
        (repo / "app" / "during_outage.py").write_text("def written_while_redis_was_down():\n    return 1\n")
        (repo / "src" / "lib.rs").unlink()
        time.sleep(1.0)  # the watcher tries, fails, and keeps the batch
        aof_server.start()
        deadline = time.monotonic() + 60
        files: list[str] = []
        while time.monotonic() < deadline:
            files = sorted(ix.store.manifests())
            if "app/during_outage.py" in files and "src/lib.rs" not in files and watcher.wait_idle(1):
                break
            time.sleep(0.05)
        assert "app/during_outage.py" in files and "src/lib.rs" not in files
        assert vset_members(ix.redis, ix.store.vset) == expected_elements(repo, files)
        assert watcher._thread is not None and watcher._thread.is_alive()
    finally:
        watcher.stop()
