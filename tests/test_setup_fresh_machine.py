"""A fresh machine: empty home, no redis-server on PATH, no WORKBENCH_* variables — Redis 8 is still found.

Set-up (scripts/ensure-redis.sh) and the runtime discovery (core.redis_server.find_server_binary) must
both come up with a Redis 8 that answers VADD from what the venv itself holds, never from ~/.cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parents[1]
# What ensure-redis.sh calls before it reaches the venv's wheel (steps 1-3).
SCRIPT_TOOLS = ["bash", "sed", "mktemp", "seq", "sleep", "rm", "dirname", "ls", "cat", "grep"]


@pytest.fixture
def fresh_env(tmp_path: Path) -> dict[str, str]:
    """An environment as on a new machine: only the tools the script needs, none of them redis."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in SCRIPT_TOOLS:
        found = shutil.which(tool)
        assert found, f"{tool} is needed by scripts/ensure-redis.sh"
        (bindir / tool).symlink_to(found)
    home = tmp_path / "home"
    home.mkdir()
    assert shutil.which("redis-server", path=str(bindir)) is None
    return {"PATH": str(bindir), "HOME": str(home), "LANG": "C.UTF-8"}


def _answers_vadd(binary: str, tmp_path: Path) -> bool:
    sock = tmp_path / "probe.sock"
    proc = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(sock), "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(unix_socket_path=str(sock))
        for _ in range(100):
            if sock.exists():
                break
            subprocess.run(["sleep", "0.05"])
        return client.execute_command("VADD", "probe", "VALUES", 2, 1.0, 0.5, "a") == 1
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_set_up_finds_a_redis_8_with_vector_sets_on_a_fresh_machine(
    fresh_env: dict[str, str], tmp_path: Path
) -> None:
    result = subprocess.run(
        [str(ROOT / "scripts" / "ensure-redis.sh"), sys.executable],
        env=fresh_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    binary = result.stdout.strip()
    assert not binary.startswith(fresh_env["HOME"]), "set-up must not rely on anything in the home directory"
    assert _answers_vadd(binary, tmp_path)


def test_runtime_discovery_finds_the_same_kind_of_server_on_a_fresh_machine(
    fresh_env: dict[str, str], tmp_path: Path
) -> None:
    code = "from core.redis_server import find_server_binary; print(find_server_binary())"
    env = dict(fresh_env, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    binary = result.stdout.strip()
    assert os.access(binary, os.X_OK) and not binary.startswith(fresh_env["HOME"])
    assert _answers_vadd(binary, tmp_path)
