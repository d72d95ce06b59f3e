"""A private redis-server for a benchmark run: on a unix socket in the run's temp dir, no snapshots."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis


def start_redis(directory: Path, *settings: str) -> tuple[subprocess.Popen[bytes], redis.Redis]:
    """Start redis-server (the binary Workbench itself uses) with `settings` on top of the basics, and
    wait until it answers; (process, client). The caller terminates the process."""
    from core.redis_server import find_server_binary

    sock = directory / "redis.sock"
    args = [find_server_binary(), "--port", "0", "--unixsocket", str(sock), "--dir", str(directory),
            "--save", "", *settings]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    client = redis.Redis(unix_socket_path=str(sock))
    for _ in range(500):
        try:
            client.ping()
            return proc, client
        except (redis.ConnectionError, OSError):
            time.sleep(0.02)
    proc.terminate()
    raise RuntimeError(f"benchmark redis-server did not start on {sock}")
