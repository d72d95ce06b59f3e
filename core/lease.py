"""One process per session: a lease in Redis (SET NX PX) renewed by a heartbeat thread.

The lease value names its holder (pid, host, a random token). A holder that died without
releasing (kill -9) blocks others only until the lease expires, or not at all when the holder
ran on this host and its pid is gone.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time

import redis

from core.errors import WorkbenchError

log = logging.getLogger("workbench.sessions")

LEASE_MS = 15_000
# Compare-and-act scripts: only the holder (same token) may renew or release.
_RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end "
    "return 0"
)
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class SessionBusy(WorkbenchError):
    """Another process holds the session's lease."""

    exit_code = 1


def lease_key(session_id: str) -> str:
    return f"wb:s:{session_id}:lease"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LeaseKeeper:
    """Holds this process's leases and renews them from one daemon thread."""

    def __init__(self, r: redis.Redis, lease_ms: int = LEASE_MS) -> None:
        self.r = r
        self.lease_ms = lease_ms
        self.host = socket.gethostname()
        self._held: dict[str, bytes] = {}  # session id -> our lease value
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._renew = r.register_script(_RENEW)
        self._release = r.register_script(_RELEASE)

    def holds(self, session_id: str) -> bool:
        with self._lock:
            return session_id in self._held

    def acquire(self, session_id: str) -> None:
        """Take the session's lease, or raise SessionBusy naming the holder."""
        if self.holds(session_id):
            return
        value = json.dumps(
            {"pid": os.getpid(), "host": self.host, "token": secrets.token_hex(8), "since": time.time()}
        ).encode()
        key = lease_key(session_id)
        for _ in range(2):
            if self.r.set(key, value, nx=True, px=self.lease_ms):
                with self._lock:
                    self._held[session_id] = value
                self._ensure_thread()
                return
            holder = self.r.get(key)
            if holder is None:
                continue  # expired between SET and GET: try once more
            info = _decode(holder)
            if info.get("host") == self.host and not _pid_alive(int(info.get("pid", 0))):
                # Its holder on this machine is dead (kill -9): the lease is stale, take it over.
                log.warning("session %s: taking over the lease of dead pid %s", session_id, info.get("pid"))
                self._release(keys=[key], args=[holder])
                continue
            ttl = self.r.pttl(key)
            raise SessionBusy(
                f"session {session_id} is in use by pid {info.get('pid', '?')} on host "
                f"{info.get('host', '?')} (its lease expires in {max(ttl, 0) / 1000:.0f} s unless renewed); "
                "close it there, or fork it with `workbench sessions fork`"
            )
        raise SessionBusy(f"session {session_id}: could not take its lease; try again")

    def release(self, session_id: str) -> None:
        with self._lock:
            value = self._held.pop(session_id, None)
        if value is not None:
            try:
                self._release(keys=[lease_key(session_id)], args=[value])
            except redis.RedisError as exc:
                log.warning("session %s: could not release its lease (%s); it expires", session_id, exc)

    def release_all(self) -> None:
        with self._lock:
            ids = list(self._held)
        for session_id in ids:
            self.release(session_id)

    def close(self) -> None:
        """Release every lease and stop the heartbeat."""
        self.release_all()
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5)

    def renew_once(self) -> None:
        with self._lock:
            held = list(self._held.items())
        for session_id, value in held:
            try:
                if not self._renew(keys=[lease_key(session_id)], args=[value, self.lease_ms]):
                    log.warning("session %s: lost its lease (expired while this process stalled)", session_id)
                    with self._lock:
                        self._held.pop(session_id, None)
            except redis.RedisError as exc:
                log.warning("session %s: lease renewal failed (%s)", session_id, exc)

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="wb-session-lease", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.lease_ms / 3000):
            self.renew_once()


def _decode(value: bytes) -> dict:
    try:
        data = json.loads(value)
        return data if isinstance(data, dict) else {}
    except ValueError:
        return {}
