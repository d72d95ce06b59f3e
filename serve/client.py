"""Submitting a turn to the workers and reading its events back: a Turn-like handle for the CLI."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis

from serve import protocol
from serve.protocol import Request


@dataclass
class RemoteEvent:
    """One reply event, as the dict the worker sent (unknown event types included, unchanged)."""

    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return self.data


class RemoteTurn:
    """What `SessionService.start_turn` returns, for a turn run by a `workbench serve` worker.

    `cancel()` stops waiting (the worker still finishes the turn and records it)."""

    def __init__(self, client: redis.Redis, request: Request, timeout_s: float = 600.0) -> None:
        self.client, self.request, self.timeout_s = client, request, timeout_s
        self.session_id: str | None = request.session
        self.result: dict[str, Any] | None = None
        self.interrupted = False
        self._cancelled = threading.Event()

    def __iter__(self) -> Iterator[RemoteEvent]:
        for event in protocol.replies(self.client, self.request.id, self.timeout_s):
            if self._cancelled.is_set():
                return
            self.session_id = event.get("session_id") or self.session_id
            if event.get("type") == "result":
                self.result = event
            yield RemoteEvent(event)

    def cancel(self) -> None:
        self._cancelled.set()

    def wait(self, timeout: float | None = None) -> dict[str, Any] | None:
        return self.result


def start_remote_turn(
    client: redis.Redis,
    prompt: str,
    session: str | None = None,
    options: dict[str, Any] | None = None,
    max_queue: int = protocol.DEFAULT_MAX_QUEUE,
) -> RemoteTurn:
    """Queue a turn for the workers (ServerBusy past `max_queue`) and return its handle."""
    request = Request(protocol.new_request_id(), prompt, session, dict(options or {}))
    protocol.submit(client, request, max_queue)
    return RemoteTurn(client, request)
