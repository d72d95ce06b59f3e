"""Submitting a turn to the workers and reading its events back: a Turn-like handle for the CLI."""

from __future__ import annotations

import time
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

    `cancel()` reaches the worker (protocol.request_cancel): it stops the turn within an engine step and
    answers with a cancelled result, which iterating still yields (as a local Turn's), waiting at most
    `cancel_wait_s` for it (no worker alive: the iteration just ends)."""

    cancel_wait_s = 10.0

    def __init__(self, client: redis.Redis, request: Request, timeout_s: float = 600.0) -> None:
        self.client, self.request, self.timeout_s = client, request, timeout_s
        self.session_id: str | None = request.session
        self.result: dict[str, Any] | None = None
        self.interrupted = False
        self._cancelled_at: float | None = None

    def __iter__(self) -> Iterator[RemoteEvent]:
        for event in protocol.replies(self.client, self.request.id, self.timeout_s, self._give_up):
            self.session_id = event.get("session_id") or self.session_id
            if event.get("type") == "result":
                self.result = event
            yield RemoteEvent(event)

    def _give_up(self) -> bool:
        """Stop waiting: only once cancelled and no answer came for cancel_wait_s."""
        when = self._cancelled_at
        return when is not None and time.monotonic() - when > self.cancel_wait_s

    def cancel(self) -> None:
        if self._cancelled_at is None:
            self._cancelled_at = time.monotonic()
            protocol.request_cancel(self.client, self.request.id)

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
