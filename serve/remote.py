"""A session service whose turns run on `workbench serve` workers: what a UI built on SessionService
(the TUI's Backend takes a `make_service`) uses to submit to remote workers instead of loading a model.

`start_turn` returns a real `sessions.turn.Turn`, fed from the request's reply stream with the same event
objects a local turn emits (`for`, `events_async()`, `wait()`, `cancel()` all behave the same; `cancel()`
reaches the worker, docs/serve.md "Cancel"). Reading sessions (list, search, show, latest, resolve, export)
goes to the shared Redis (or this machine's disk log, when it has one), so what workers record is seen
at once. What this service does not do, and why:
  - `open()` takes no lease: the worker that runs the next turn must take it.
  - `warm()` restores nothing (there is no local cache; a worker restores from the shared blocks).
  - fork, rename and delete write a session's disk log, which lives on the worker's machine: they raise
    UsageError naming where to run them.
  - agent tools (`allow_tools`) are not sent: a worker runs plain turns (the protocol has no approvals).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from core.errors import UsageError, WorkbenchError
from serve import protocol
from serve.protocol import OPTION_NAMES, Request
from sessions import events as ev
from sessions.model import Session
from sessions.options import TurnOptions, repo_root
from sessions.reads import SessionReads
from sessions.store import SessionStore
from sessions.turn import Turn

log = logging.getLogger(__name__)

CANCEL_WAIT_S = 10.0

_EVENT_TYPES: dict[str, type[ev.Event]] = {
    cls.type: cls
    for cls in (ev.Queued, ev.ModelLoading, ev.SessionStarted, ev.IndexProgress, ev.Retrieval, ev.CacheStats,
                ev.Prefill, ev.TextDelta, ev.ToolCall, ev.ToolResult, ev.ApprovalNeeded, ev.Result)
}  # fmt: skip


def event_from_dict(data: dict[str, Any]) -> ev.Event | None:
    """The event object of one stream-json line; None for a type this process does not know
    (`requeued`, or one a newer worker sends)."""
    cls = _EVENT_TYPES.get(str(data.get("type")))
    if cls is None:
        return None
    names = {f.name for f in dataclasses.fields(cls)}
    fields = {k: v for k, v in data.items() if k in names}
    if cls is ev.Retrieval:
        fields["chunks"] = [ev.RetrievedChunk(**c) for c in fields.get("chunks", [])]
    return cls(**fields)


def request_options(options: TurnOptions) -> dict[str, Any]:
    """The turn options a request carries: the protocol's names, those set."""
    return {name: getattr(options, name) for name in sorted(OPTION_NAMES)
            if getattr(options, name) not in (None, False)}  # fmt: skip


class RemoteSessionService(SessionReads):
    def __init__(self, client: Any = None, max_queue: int = protocol.DEFAULT_MAX_QUEUE,
                 timeout_s: float = 600.0) -> None:  # fmt: skip
        if client is None:
            from core.redis_server import connect

            client = connect()
        self.r = client
        self.store = SessionStore(client, sync=False)  # the workers keep the Redis side current
        self.max_queue, self.timeout_s = max_queue, timeout_s
        self._running: list[tuple[threading.Thread, Turn]] = []

    # -- turns -------------------------------------------------------------------------------------

    def start_turn(self, session_id: str | None, prompt: str, options: TurnOptions | None = None) -> Turn:
        """Submit the turn and return its handle at once; the reply stream is read on a thread."""
        options = options or TurnOptions()
        if not prompt.strip():
            raise UsageError("empty prompt: give the assistant something to answer")
        if session_id is None and options.repo is None:  # the worker's cwd is not ours
            options = dataclasses.replace(options, repo=repo_root())
        turn = Turn(session_id)
        request = Request(protocol.new_request_id(), prompt, session_id, request_options(options))
        thread = threading.Thread(target=self._follow, args=(turn, request), daemon=True,
                                  name=f"remote-turn-{request.id[:8]}")  # fmt: skip
        self._running = [(t, x) for t, x in self._running if t.is_alive()] + [(thread, turn)]
        thread.start()
        return turn

    def _follow(self, turn: Turn, request: Request) -> None:
        try:
            protocol.submit(self.r, request, self.max_queue)
        except WorkbenchError as exc:  # ServerBusy: the queue is full
            return turn.emit(_failed(request.session, str(exc), exc.exit_code))
        turn.on_cancel(lambda: protocol.request_cancel(self.r, request.id))
        try:
            for data in protocol.replies(self.r, request.id, self.timeout_s, self._gave_up(turn)):
                event = event_from_dict(data)
                if event is not None:
                    turn.emit(event)
                if isinstance(event, ev.Result):
                    return
        except Exception as exc:  # Redis went away, or no worker answered in time
            log.warning("remote turn %s: %s", request.id, exc)
            return turn.emit(_failed(turn.session_id, f"remote turn {request.id}: {exc}", 1))
        # Cancelled, and no worker answered for a while: end the turn here.
        turn.emit(ev.Result(turn.session_id, finish_reason="cancelled", exit_code=130))

    def _gave_up(self, turn: Turn) -> Callable[[], bool]:
        """Stop reading once the turn was cancelled and no worker answered for CANCEL_WAIT_S."""
        cancelled_at: list[float] = []

        def give_up() -> bool:
            if not turn.cancelled:
                return False
            cancelled_at[:] = cancelled_at or [time.monotonic()]
            return time.monotonic() - cancelled_at[0] > CANCEL_WAIT_S

        return give_up

    # -- sessions (reads) -------------------------------------------------------------------------

    def open(self, id_or_prefix: str) -> Session:
        return self.show(id_or_prefix)  # no lease: the worker running its next turn takes it

    def close_session(self, session_id: str) -> None:
        pass  # open() took nothing

    def warm(self, id_or_prefix: str, model: str | None = None, backend: str | None = None) -> Future:
        done: Future = Future()
        done.set_result(None)  # nothing to restore here: the worker restores from the shared blocks
        return done

    # -- sessions (writes that need the disk log) -------------------------------------------------

    def fork(self, id_or_prefix: str, at: int | None = None, title: str | None = None) -> Session:
        raise UsageError(_where("fork", id_or_prefix))

    def rename(self, id_or_prefix: str, title: str) -> Session:
        raise UsageError(_where("rename", id_or_prefix))

    def delete(self, id_or_prefix: str) -> str:
        raise UsageError(_where("delete", id_or_prefix))

    def close(self, cancel_pending: bool = False, timeout: float | None = None) -> bool:
        """Wait for the turns in flight (with `cancel_pending`, cancel them first)."""
        for thread, turn in self._running:
            if cancel_pending:
                turn.cancel()
            thread.join(timeout)
        return not any(t.is_alive() for t, _ in self._running)

    def __enter__(self) -> RemoteSessionService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _where(what: str, session: str) -> str:
    return (f"cannot {what} session {session} through the workers: its log is on the machine that runs "
            "`workbench serve`; run `workbench sessions` there")  # fmt: skip


def _failed(session_id: str | None, message: str, exit_code: int) -> ev.Result:
    return ev.Result(session_id, finish_reason="error", is_error=True, error=message, exit_code=exit_code)
