"""The request/reply stream protocol between submitters and engine workers (docs/serve.md).

Every key carries the hash tag `{wbq}` so that a worker's end-of-request transaction (send the result,
record it, XACK, XDEL) is one MULTI in one Redis Cluster slot: a reader that sees the result sees the
request acked, and a worker killed before it leaves the request pending and unanswered.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis

from core.errors import UsageError, WorkbenchError

REQUESTS = "wb:srv:{wbq}:requests"
GROUP = "workers"
DEFAULT_MAX_QUEUE = 64
# Option names a request may carry: the fields of sessions.TurnOptions.
OPTION_NAMES = frozenset({
    "model", "backend", "repo", "title", "system_prompt", "rag", "thinking", "max_tokens",
    "temperature", "top_p", "top_k", "seed", "no_cache",
})  # fmt: skip

# Queue length is checked and the request added in one step, so concurrent submitters cannot
# overshoot the bound. Acked requests are XDELed by the worker: XLEN = waiting + in progress.
SUBMIT_SCRIPT = """
local limit = tonumber(ARGV[1])
if redis.call('XLEN', KEYS[1]) >= limit then return false end
return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
"""


class ServerBusy(WorkbenchError):
    """The request queue is at its bound: try again later (or start more workers)."""

    exit_code = 1


def reply_key(request_id: str) -> str:
    return f"wb:srv:{{wbq}}:reply:{request_id}"


def done_key(request_id: str) -> str:
    return f"wb:srv:{{wbq}}:done:{request_id}"


def run_key(request_id: str) -> str:
    return f"wb:srv:{{wbq}}:run:{request_id}"


def cancel_key(request_id: str) -> str:
    return f"wb:srv:{{wbq}}:cancel:{request_id}"


def request_cancel(client: redis.Redis, request_id: str, ttl_s: int = 3600) -> None:
    """Ask whichever worker runs (or will pick up) `request_id` to stop it: it answers with a cancelled
    result, the reply so far recorded as interrupted. The key outlives a queue wait; the worker drops it."""
    client.set(cancel_key(request_id), "1", ex=ttl_s)


@dataclass
class Request:
    id: str
    prompt: str
    session: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def fields(self) -> dict[str, str]:
        out = {"id": self.id, "prompt": self.prompt, "options": json.dumps(self.options)}
        if self.session:
            out["session"] = self.session
        return out

    @classmethod
    def parse(cls, raw: dict[bytes, bytes]) -> Request:
        """A request from its stream fields; UsageError naming the field at fault."""
        data = {k.decode(): v.decode("utf-8", "replace") for k, v in raw.items()}
        rid = data.get("id", "").strip()
        if not rid:
            raise UsageError("request has no 'id' field")
        try:
            options = json.loads(data.get("options") or "{}")
        except json.JSONDecodeError as e:
            raise UsageError(f"request {rid}: 'options' is not JSON ({e.msg})") from None
        if not isinstance(options, dict):
            raise UsageError(f"request {rid}: 'options' must be a JSON object")
        unknown = sorted(set(options) - OPTION_NAMES)
        if unknown:
            raise UsageError(f"request {rid}: unknown option(s) {', '.join(unknown)}")
        return cls(rid, data.get("prompt", ""), data.get("session") or None, options)


def submit(client: redis.Redis, request: Request, max_queue: int = DEFAULT_MAX_QUEUE) -> bytes:
    """Queue `request`; returns its stream entry id. Raises ServerBusy past `max_queue` entries."""
    args: list[str] = [str(max_queue)]
    for name, value in request.fields().items():
        args += [name, value]
    entry = client.eval(SUBMIT_SCRIPT, 1, REQUESTS, *args)
    if entry is None:
        raise ServerBusy(
            f"busy: the request queue {REQUESTS} holds {max_queue} requests (its limit); "
            "try again or start another `workbench serve`"
        )
    return entry


def new_request_id() -> str:
    return uuid.uuid4().hex


def replies(
    client: redis.Redis, request_id: str, timeout_s: float = 600.0, give_up: Callable[[], bool] | None = None
) -> Iterator[dict[str, Any]]:
    """The events of one request as they arrive, ending with its `result` (TimeoutError past `timeout_s`
    without any event; just the end when `give_up()` says so between reads)."""
    key, last = reply_key(request_id), "0-0"
    deadline = time.monotonic() + timeout_s
    while True:
        if give_up is not None and give_up():
            return
        got = client.xread({key: last}, count=64, block=200 if give_up is not None else 1000)
        if not got:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no reply on {key} for {timeout_s:.0f} s: is `workbench serve` running?")
            continue
        deadline = time.monotonic() + timeout_s
        for entry_id, fields in got[0][1]:
            last = entry_id
            event = json.loads(fields[b"event"])
            yield event
            if event.get("type") == "result":
                return
