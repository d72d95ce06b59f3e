"""A private 3-master Redis Cluster on loopback for the tests: real redis-server processes with
`cluster-enabled yes`, the slots split in three with CLUSTER ADDSLOTSRANGE and the nodes joined with
CLUSTER MEET, all through redis-py (no redis-cli). No persistence: a restarted node comes back empty.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis
from redis.cluster import RedisCluster

from core import redis_server

SLOTS = 16384
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class ClusterNode:
    """One master: a client port and a bus port, its own dir (nodes.conf lives there)."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.dir = directory
        self.port = free_port()
        self.bus_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def client(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, socket_connect_timeout=2)

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [self.binary, "--port", str(self.port), "--cluster-port", str(self.bus_port),
                "--bind", HOST, "--dir", str(self.dir), "--cluster-enabled", "yes",
                "--cluster-config-file", str(self.dir / "nodes.conf"), "--cluster-node-timeout", "2000",
                "--save", "", "--appendonly", "no", "--logfile", str(self.dir / "redis.log")]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        _wait(lambda: bool(self.client().ping()), f"cluster node on port {self.port} did not start")

    def kill(self) -> None:
        """SIGKILL, as a crashed machine: nothing is saved (there is no persistence anyway)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


class PrivateCluster:
    def __init__(self, directory: Path, masters: int = 3) -> None:
        binary = redis_server.find_server_binary()
        self.nodes = [ClusterNode(binary, directory / f"node{i}") for i in range(masters)]

    @property
    def url(self) -> str:
        return f"redis+cluster://{HOST}:{self.nodes[0].port}"

    def client(self) -> RedisCluster:
        return RedisCluster(host=HOST, port=self.nodes[0].port)

    def start(self) -> PrivateCluster:
        for node in self.nodes:
            node.start()
        per = SLOTS // len(self.nodes)
        for i, node in enumerate(self.nodes):
            last = SLOTS - 1 if i == len(self.nodes) - 1 else (i + 1) * per - 1
            node.client().execute_command("CLUSTER", "ADDSLOTSRANGE", i * per, last)
        self._meet()
        return self

    def _meet(self) -> None:
        first = self.nodes[0].client()
        for node in self.nodes[1:]:
            first.execute_command("CLUSTER", "MEET", HOST, node.port, node.bus_port)
        self.wait_ok()

    def wait_ok(self, timeout: float = 30) -> None:
        """Until every node reports cluster_state:ok and knows all the masters."""

        def ok() -> bool:
            for node in self.nodes:
                info = node.client().cluster("info")
                if info.get("cluster_state") != "ok" or int(info.get("cluster_known_nodes", 0)) != len(
                    self.nodes
                ):
                    return False
            return True

        _wait(ok, "the private Redis Cluster did not reach cluster_state:ok", timeout)

    def restart(self, index: int) -> None:
        """Kill master `index` and start it again on the same dir and ports: it keeps its node id and
        slots (nodes.conf) but, with no persistence, none of its keys."""
        node = self.nodes[index]
        node.kill()
        node.start()
        self.wait_ok()

    def node_of(self, key: str | bytes) -> int:
        """Which of our masters holds `key`'s slot (start() gave master i the i-th third)."""
        slot = int(self.nodes[0].client().cluster("keyslot", key))
        return min(slot // (SLOTS // len(self.nodes)), len(self.nodes) - 1)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _wait(check: Callable[[], bool], message: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (redis.ConnectionError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(message)
