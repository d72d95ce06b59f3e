"""An engine worker: turn requests from the `{wbq}` stream's consumer group, run by the session service.

Delivery is at least once (a pending request of a dead worker is XAUTOCLAIMed after `claim_idle_ms`);
answering is at most once: a finished request's result is recorded under its id in the same
transaction that XACKs it, and a request whose result exists is acked without running again.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import redis

from core.errors import WorkbenchError
from core.lease import lease_key, pid_alive
from serve import protocol
from serve.protocol import GROUP, REQUESTS, Request
from sessions.options import TurnOptions
from sessions.service import SessionService

log = logging.getLogger(__name__)


class Worker:
    def __init__(
        self,
        client: redis.Redis,
        service: SessionService,
        name: str | None = None,
        claim_idle_ms: int = 30_000,
        block_ms: int = 1000,
        reply_ttl_s: int = 3600,
        cancel_poll_s: float = 0.1,
        concurrency: int = 4,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.client = client
        self.service = service
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.claim_idle_ms = claim_idle_ms
        self.block_ms = block_ms
        self.reply_ttl_s = reply_ttl_s
        self.cancel_poll_s = cancel_poll_s
        self.concurrency = concurrency
        self._ensure_group()

    def _ensure_group(self) -> None:
        try:
            self.client.xgroup_create(REQUESTS, GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    def run(self, stop: threading.Event | None = None, max_requests: int | None = None) -> int:
        """Serve until `stop` is set (or `max_requests` were taken); returns how many were handled.

        Up to `concurrency` requests at once: their turns queue on the service's one engine thread, so
        what overlaps is the rest (reading the request, opening the session, sending events)."""
        taken = 0
        inflight: set[Future] = set()
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="serve-request") as pool:
            while not (stop and stop.is_set()) and (max_requests is None or taken < max_requests):
                inflight = {f for f in inflight if not f.done()}
                room = self.concurrency - len(inflight)
                if max_requests is not None:
                    room = min(room, max_requests - taken)
                if room <= 0:
                    wait(inflight, timeout=self.block_ms / 1000, return_when=FIRST_COMPLETED)
                    continue
                for entry_id, fields in self._take(room):
                    inflight.add(pool.submit(self.handle, entry_id, fields))
                    taken += 1
        return taken

    def step(self) -> bool:
        """Handle at most one request, on this thread: first one a dead worker left pending, else a new."""
        entries = self._take(1)
        for entry_id, fields in entries:
            self.handle(entry_id, fields)
        return bool(entries)

    def _take(self, count: int) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Up to `count` requests: those a dead worker left pending (XAUTOCLAIM) first, then new ones."""
        _, claimed, *_ = self.client.xautoclaim(
            REQUESTS, GROUP, self.name, min_idle_time=self.claim_idle_ms, start_id="0-0", count=count
        )
        entries = [e for e in claimed if e and e[1]]  # a deleted entry comes back without fields
        if not entries:
            got = self.client.xreadgroup(GROUP, self.name, {REQUESTS: ">"}, count=count, block=self.block_ms)
            entries = got[0][1] if got else []
        return entries

    def handle(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        try:
            request = Request.parse(fields)
        except WorkbenchError as e:
            rid = fields.get(b"id", b"").decode() or entry_id.decode()
            self._finish(entry_id, rid, _error_result(None, str(e), e.exit_code))
            return
        if self.client.exists(protocol.done_key(request.id)):
            log.info("request %s was answered already: acked, not run again", request.id)
            self._ack(entry_id)
            return
        if self.client.exists(protocol.cancel_key(request.id)):  # cancelled while it waited in the queue
            self._finish(entry_id, request.id, _cancelled_result(request.session))
            return
        attempt = int(self.client.hincrby(protocol.run_key(request.id), "attempts", 1))
        self.client.hset(protocol.run_key(request.id), "worker", self.name)
        if attempt > 1:  # a reader discards what it got from the earlier attempt
            self._emit(request.id, {"type": "requeued", "session_id": None, "attempt": attempt,
                                    "worker": self.name})  # fmt: skip
        result = self._run_turn(entry_id, request, rerun=attempt > 1)
        self._finish(entry_id, request.id, result)

    def _run_turn(self, entry_id: bytes, request: Request, rerun: bool) -> dict[str, Any]:
        # A re-run continues the session the first attempt recorded, not a second new one, and does not
        # record the prompt again if that attempt did (TurnOptions.rerun).
        recorded = self.client.hget(protocol.run_key(request.id), "session")
        session = request.session or (recorded.decode() if recorded else None)
        if rerun and session is not None:
            self._await_dead_lease(entry_id, session)
        try:
            options = TurnOptions(**request.options, rerun=rerun and session is not None)
            turn = self.service.start_turn(session, request.prompt, options)
        except WorkbenchError as e:
            return _error_result(session, str(e), e.exit_code)
        except TypeError as e:  # a option of the wrong kind for TurnOptions
            return _error_result(session, f"request {request.id}: bad options ({e})", 2)
        ended = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(entry_id, request.id, turn, ended), daemon=True)
        watcher.start()
        try:
            for event in turn:
                data = event.to_dict()
                if data.get("type") == "result":
                    return data
                if data.get("type") == "session" and data.get("created"):
                    self.client.hset(protocol.run_key(request.id), "session", data["session_id"])
                self._emit(request.id, data)  # event types this worker does not know are forwarded as is
            return _error_result(turn.session_id, "the turn ended without a result", 1)
        finally:
            ended.set()
            watcher.join(timeout=5)

    def _watch(self, entry_id: bytes, request_id: str, turn: Any, ended: threading.Event) -> None:
        """While the turn runs: poll the request's cancel key (on it, cancel the turn, which stops the
        engine within its current step: queued, model load, retrieval, prefill chunk or decode step) and
        heartbeat the request every third of the claim timeout. A thread of its own, on the clock: a turn
        queued behind others, a long prefill or a model load sends no event a loop could act on."""
        key = protocol.cancel_key(request_id)
        beat = time.monotonic()
        while not ended.wait(self.cancel_poll_s):
            try:
                if time.monotonic() - beat > self.claim_idle_ms / 3000:
                    beat = time.monotonic()
                    self._heartbeat(entry_id)
                if not turn.cancelled and self.client.exists(key):
                    turn.cancel()
            except redis.RedisError as exc:  # Redis is briefly away: keep the turn, look again
                log.warning("request %s: cancel key or heartbeat failed (%s)", request_id, exc)

    def _await_dead_lease(self, entry_id: bytes, session: str) -> None:
        """A re-run's session may still be leased by the dead worker: on this host the lease is taken
        over at once (its pid is gone), from another host it lasts until its TTL runs out, so wait for
        that (at most one TTL, heartbeating the request) instead of answering "session in use"."""
        try:
            key = lease_key(self.service.resolve(session))
            raw, ttl_ms = self.client.get(key), self.client.pttl(key)
        except WorkbenchError:
            return  # the turn reports what is wrong with the session
        if raw is None or ttl_ms <= 0:
            return
        holder = json.loads(raw)
        if holder.get("host") == socket.gethostname() and not pid_alive(int(holder.get("pid") or 0)):
            return
        deadline = time.monotonic() + ttl_ms / 1000 + 0.5
        while self.client.exists(key) and time.monotonic() < deadline:
            time.sleep(0.2)
            self._heartbeat(entry_id)

    def _heartbeat(self, entry_id: bytes) -> None:
        """Reset the entry's idle time, so a long turn of a live worker is never claimed by another."""
        self.client.xclaim(REQUESTS, GROUP, self.name, min_idle_time=0, message_ids=[entry_id], justid=True)

    def _emit(self, request_id: str, event: dict[str, Any]) -> None:
        self.client.xadd(protocol.reply_key(request_id), {"event": json.dumps(event)})

    def _finish(self, entry_id: bytes, request_id: str, result: dict[str, Any]) -> None:
        """Send and record the result, ack and drop the request: one transaction."""
        key = protocol.reply_key(request_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(key, {"event": json.dumps(result)})
        pipe.expire(key, self.reply_ttl_s)
        pipe.set(protocol.done_key(request_id), json.dumps(result), ex=self.reply_ttl_s)
        pipe.delete(protocol.run_key(request_id))
        pipe.delete(protocol.cancel_key(request_id))
        pipe.xack(REQUESTS, GROUP, entry_id)
        pipe.xdel(REQUESTS, entry_id)
        pipe.execute()

    def _ack(self, entry_id: bytes) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.xack(REQUESTS, GROUP, entry_id)
        pipe.xdel(REQUESTS, entry_id)
        pipe.execute()


def _error_result(session_id: str | None, message: str, exit_code: int) -> dict[str, Any]:
    return {"type": "result", "session_id": session_id, "text": "", "reasoning": "", "finish_reason": "error",
            "is_error": True, "error": message, "exit_code": exit_code}  # fmt: skip


def _cancelled_result(session_id: str | None) -> dict[str, Any]:
    return {"type": "result", "session_id": session_id, "text": "", "reasoning": "",
            "finish_reason": "cancelled", "is_error": False, "error": None, "exit_code": 130}  # fmt: skip
