"""Test harness: one private redis-server per run, a fresh data dir per test.

Tests never touch a user's Redis or data dir: every test gets REDIS_URL pointing at the private
server and WORKBENCH_HOME at its own temp dir. A module marked `pytest.mark.redis_cluster` runs each of
its tests twice: against the single server and against a private 3-master Redis Cluster on loopback
(tests/cluster_support.py, started once per run when the first such test needs it).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from core import redis_server
from tests.cluster_support import PrivateCluster

# Tiny random-weight models of each architecture (session-scoped, built once per run).
pytest_plugins = ["tests.fixtures.tiny_models"]


class PrivateRedis:
    """A redis-server owned by the tests: unix socket in a temp dir, no persistence by default."""

    def __init__(self, directory: Path, *extra: str, password: str | None = None) -> None:
        self.binary = redis_server.find_server_binary()
        self.dir = directory
        self.socket = directory / "redis.sock"
        self.extra = (*extra, "--requirepass", password) if password else extra
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket), password=self.password)

    def start(self) -> PrivateRedis:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        args = [self.binary, "--port", "0", "--unixsocket", str(self.socket), "--dir", str(self.dir)]
        args += ["--save", "", "--appendonly", "no", *self.extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return self
            except (redis.ConnectionError, OSError):
                time.sleep(0.02)
        raise RuntimeError(f"test redis-server did not start on {self.socket}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture(scope="session")
def redis_private() -> Iterator[PrivateRedis]:
    directory = Path(tempfile.mkdtemp(prefix="wb-redis-"))
    server = PrivateRedis(directory).start()
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "redis_cluster: each test runs on one Redis and on a Redis Cluster")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("redis_cluster") and "redis_backend" in metafunc.fixturenames:
        metafunc.parametrize("redis_backend", ["single", "cluster"], indirect=True)


@pytest.fixture
def redis_backend(request: pytest.FixtureRequest) -> str:
    """Which Redis: `single` (the private redis-server) or `cluster` (the private Redis Cluster)."""
    return str(getattr(request, "param", "single"))


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[PrivateCluster]:
    directory = Path(tempfile.mkdtemp(prefix="wb-cluster-"))
    cluster = PrivateCluster(directory).start()
    yield cluster
    cluster.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(autouse=True)
def workbench_env(
    redis_private: PrivateRedis,
    redis_backend: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Path]:
    """Every test: REDIS_URL -> the private server (or cluster); WORKBENCH_HOME -> a short fresh temp dir."""
    home = Path(tempfile.mkdtemp(prefix="wb-home-"))
    url = redis_private.url if redis_backend == "single" else request.getfixturevalue("redis_cluster").url
    monkeypatch.setenv("REDIS_URL", url)
    monkeypatch.setenv("WORKBENCH_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    redis_server.reset_clients()
    yield home
    redis_server.reset_clients()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def redis_client(
    redis_private: PrivateRedis, redis_backend: str, request: pytest.FixtureRequest
) -> redis.Redis:
    """A client of the private server (or a RedisCluster client of the private cluster), flushed first."""
    if redis_backend == "cluster":
        cluster_client = request.getfixturevalue("redis_cluster").client()
        cluster_client.flushall()
        return cluster_client  # the same commands as a Redis client: what core.redis_server.connect() gives
    client = redis_private.client()
    client.flushall()
    return client
