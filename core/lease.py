"""The one Redis lease: SET NX PX with a value naming its holder, renewed by a heartbeat thread.

Every change to a taken lease is a compare-and-act script (renew, release and take over only while the
key still holds the value the caller read), so no process can drop or extend another's lease. A holder
that died without releasing (kill -9) blocks others only until the lease expires, or not at all when it
ran on this host and its pid is gone: it is taken over at once.

`Lease` is one key (the index writer's); `LeaseKeeper` holds the session leases of a process.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from core import keys
from core.errors import WorkbenchError

log = logging.getLogger("workbench.lease")

LEASE_MS = 15_000
POLL_S = 0.1  # how often a waiter looks again
# Compare-and-act scripts: only the holder (same value) may renew, release or be replaced.
_RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end "
    "return 0"
)
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
_REPLACE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3]) "
    "return 1 end return 0"
)


class SessionBusy(WorkbenchError):
    """Another process holds the session's lease."""

    exit_code = 1


class LeaseBusy(WorkbenchError):
    """A lease stayed held by another live process for longer than the caller would wait."""

    exit_code = 1

    def __init__(self, message: str, holder: Holder) -> None:
        super().__init__(message)
        self.holder = holder


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, from its value."""

    pid: int
    host: str
    since: float  # epoch seconds when it was taken
    ttl_s: float  # until it expires unless renewed
    label: str = ""  # what the holder is doing ("indexing /repo"), for messages

    def describe(self) -> str:
        doing = f" ({self.label})" if self.label else ""
        return f"pid {self.pid} on host {self.host}{doing}, for {max(time.time() - self.since, 0):.0f} s"


def lease_key(session_id: str) -> str:
    return f"{keys.SESSIONS}{session_id}:lease"  # beside the session's other keys (core.keys)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs. A zombie (killed, not yet reaped by its parent) is dead: a SIGKILLed
    worker whose parent has not waited for it yet must not keep its leases for their whole TTL."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (macOS) or gone meanwhile: os.kill said it exists
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]  # the state follows the parenthesised name


class Lease:
    """One lease on one key. `token` identifies the holder across Lease objects of one owner (an index
    takes back a lease of its own that a Redis restart left behind)."""

    def __init__(
        self,
        r: redis.Redis,
        key: str,
        lease_ms: int = LEASE_MS,
        *,
        host: str | None = None,
        token: str | None = None,
        label: str = "",
    ) -> None:
        self.r, self.key, self.lease_ms, self.label = r, key, lease_ms, label
        self.host = host or socket.gethostname()
        self.token = token or secrets.token_hex(8)
        self.value: bytes | None = None  # ours while held
        self.lost = threading.Event()  # set when a renewal found the lease gone or someone else's
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def held(self) -> bool:
        return self.value is not None and not self.lost.is_set()

    def try_acquire(self) -> Holder | None:
        """Take the lease if it is free, expired, ours, or left by a dead holder on this host; else
        return who holds it (nothing is changed then)."""
        if self.held:
            return None
        value = json.dumps({"pid": os.getpid(), "host": self.host, "token": self.token,
                            "since": time.time(), "label": self.label}).encode()  # fmt: skip
        for _ in range(3):
            if self.r.set(self.key, value, nx=True, px=self.lease_ms):
                return self._took(value)
            current = self.r.get(self.key)
            if current is None:
                continue  # expired between SET and GET: try again
            info = _decode(current)
            if self._stale(info):
                if self.r.eval(_REPLACE, 1, self.key, current, value, self.lease_ms):
                    if info.get("token") != self.token:
                        log.warning("%s: took over the lease of dead pid %s", self.key, info.get("pid"))
                    return self._took(value)
                continue  # it changed hands meanwhile: look again
            return _holder(info, self.r.pttl(self.key))
        return self.holder() or Holder(0, "?", time.time(), 0.0)

    def acquire(
        self,
        wait_s: float,
        on_wait: Callable[[Holder, float], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> bool:
        """Take the lease, waiting up to `wait_s` while a live process holds it (`on_wait(holder,
        waited_s)` after each look). False when `cancel` was set; LeaseBusy naming the holder on timeout."""
        t0 = time.monotonic()
        while True:
            holder = self.try_acquire()
            if holder is None:
                return True
            waited = time.monotonic() - t0
            if waited >= wait_s:
                raise LeaseBusy(f"{self.key} is held by {holder.describe()}; gave up after {waited:.0f} s",
                                holder)  # fmt: skip
            if on_wait is not None:
                on_wait(holder, waited)
            if cancel is not None and cancel.wait(POLL_S):
                return False
            if cancel is None:
                time.sleep(POLL_S)

    def holder(self) -> Holder | None:
        """Who holds the lease now: None when it is free or its holder is dead on this host."""
        current = self.r.get(self.key)
        if current is None:
            return None
        info = _decode(current)
        if info.get("host") == self.host and not pid_alive(_pid(info)):
            return None
        return _holder(info, self.r.pttl(self.key))

    def renew(self) -> bool:
        """Extend the lease; False (and `lost` set) if it is no longer ours."""
        if self.value is None:
            return False
        if self.r.eval(_RENEW, 1, self.key, self.value, self.lease_ms):
            return True
        log.warning("%s: lost its lease (expired while this process stalled)", self.key)
        self.lost.set()
        return False

    def release(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        value, self.value = self.value, None
        if value is not None:
            try:
                self.r.eval(_RELEASE, 1, self.key, value)
            except redis.RedisError as exc:
                log.warning("%s: could not release its lease (%s); it expires", self.key, exc)

    def start_heartbeat(self, on_lost: Callable[[Lease], None] | None = None) -> None:
        """Renew from a daemon thread every third of the lease until `release` (or until it is lost)."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, args=(on_lost,), name="wb-lease", daemon=True)
        self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()

    def _beat(self, on_lost: Callable[[Lease], None] | None) -> None:
        while not self._stop.wait(self.lease_ms / 3000):
            try:
                if not self.renew():
                    if on_lost is not None:
                        on_lost(self)
                    return
            except redis.RedisError as exc:  # Redis restarting: the next beat tries again
                log.warning("%s: lease renewal failed (%s)", self.key, exc)

    def _took(self, value: bytes) -> Holder | None:
        self.value = value
        self.lost.clear()
        return None

    def _stale(self, info: dict[str, Any]) -> bool:
        if info.get("token") == self.token:
            return True  # our own, left behind (a Redis restart, a release that failed)
        return info.get("host") == self.host and not pid_alive(_pid(info))


class LeaseKeeper:
    """Holds this process's session leases, each renewed by its heartbeat."""

    def __init__(self, r: redis.Redis, lease_ms: int = LEASE_MS) -> None:
        self.r = r
        self.lease_ms = lease_ms
        self.host = socket.gethostname()
        self._held: dict[str, Lease] = {}
        self._lock = threading.Lock()

    def holds(self, session_id: str) -> bool:
        with self._lock:
            return session_id in self._held

    def acquire(self, session_id: str) -> None:
        """Take the session's lease, or raise SessionBusy naming the holder."""
        if self.holds(session_id):
            return
        lease = Lease(self.r, lease_key(session_id), self.lease_ms, host=self.host)
        holder = lease.try_acquire()
        if holder is not None:
            raise SessionBusy(
                f"session {session_id} is in use by pid {holder.pid} on host {holder.host} (its lease "
                f"expires in {holder.ttl_s:.0f} s unless renewed); close it there, or fork it with "
                "`workbench sessions fork`"
            )
        with self._lock:
            self._held[session_id] = lease
        lease.start_heartbeat(on_lost=lambda _: self._forget(session_id))

    def release(self, session_id: str) -> None:
        with self._lock:
            lease = self._held.pop(session_id, None)
        if lease is not None:
            lease.release()

    def release_all(self) -> None:
        with self._lock:
            ids = list(self._held)
        for session_id in ids:
            self.release(session_id)

    def close(self) -> None:
        """Release every lease and stop the heartbeats."""
        self.release_all()

    def renew_once(self) -> None:
        with self._lock:
            held = list(self._held.items())
        for session_id, lease in held:
            try:
                if not lease.renew():
                    self._forget(session_id)
            except redis.RedisError as exc:
                log.warning("session %s: lease renewal failed (%s)", session_id, exc)

    def _forget(self, session_id: str) -> None:
        with self._lock:
            lease = self._held.pop(session_id, None)
        if lease is not None:
            lease.stop_heartbeat()


def _holder(info: dict[str, Any], pttl: int) -> Holder:
    return Holder(_pid(info), str(info.get("host", "?")), float(info.get("since", 0) or 0),
                  max(pttl, 0) / 1000, str(info.get("label", "")))  # fmt: skip


def _pid(info: dict[str, Any]) -> int:
    try:
        return int(info.get("pid", 0) or 0)
    except (TypeError, ValueError):
        return 0


def _decode(value: bytes) -> dict[str, Any]:
    try:
        data = json.loads(value)
        return data if isinstance(data, dict) else {}
    except ValueError:
        return {}
