"""What lets an agent turn leave the engine thread: its steps go back to it, its approvals go to the caller.

An agent turn runs its loop on a thread of its own (sessions/agent_turn.py). Only generation needs the
engine thread (the model, its KV cache, MLX streams), so each step is handed to it as a job and its
events come back through a queue; tools run and approvals wait on the agent's thread, so while a user
reads a diff, another session's turn runs. A cancel while a step is still queued drops the step.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

from sessions.events import ApprovalNeeded

CANCEL_POLL_S = 0.05  # how often a wait for a queued step notices a cancel

OnEngine = Callable[[Callable[[], Any]], "Future[Any]"]  # run a callable on the engine thread


class _End:
    pass


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def on_engine_thread(step: Callable[[list[dict[str, Any]], threading.Event], Iterator[Any]],
                     on_engine: OnEngine, messages: list[dict[str, Any]], cancel: threading.Event,
                     not_started: Callable[[], Any]) -> Iterator[Any]:  # fmt: skip
    """`step(messages, cancel)`'s events, the step running on the engine thread; `not_started()` is the
    final event when a cancel drops the step before it starts."""
    events: queue.Queue[Any] = queue.Queue()

    def work() -> None:
        try:
            for event in step(messages, cancel):
                events.put(event)
        except BaseException as exc:  # re-raised on the agent's thread, where the loop handles it
            events.put(_Failed(exc))
        finally:
            events.put(_End())

    future = on_engine(work)
    while True:
        try:
            item = events.get(timeout=CANCEL_POLL_S)
        except queue.Empty:
            if cancel.is_set() and future.cancel():  # still queued behind another turn: it never runs
                yield not_started()
                return
            continue
        if isinstance(item, _End):
            return
        if isinstance(item, _Failed):
            raise item.exc
        yield item


class TurnApprover:
    """The agent.policy.Approver of `TurnOptions(ask_approval=True)`: an `approval` event the caller
    answers with `Turn.answer`; a cancel rejects at once. It waits on the agent's thread only."""

    def __init__(self, turn: Any, session_id: str) -> None:
        self.turn, self.session_id = turn, session_id

    def __call__(self, request: Any) -> Any:
        from agent.policy import Decision

        answer = self.turn.ask(request.call_id)
        self.turn.emit(ApprovalNeeded(self.session_id, call_id=request.call_id, tool=request.tool,
                                      kind=str(request.kind), title=request.title, preview=request.preview,
                                      arguments=dict(request.arguments)))  # fmt: skip
        return Decision(answer.result())


class Partials:
    """The text of the reply being generated, appended to the session's log every `interval_s`, so a
    process killed mid-step leaves it as an interrupted reply (as a plain turn's partial records do)."""

    def __init__(self, store: Any, session: Any, index: int, interval_s: float) -> None:
        self.store, self.session, self.index, self.interval_s = store, session, index, interval_s
        self.pending = {"answer": "", "reasoning": ""}
        self.text = {"answer": "", "reasoning": ""}  # everything so far
        self.last = time.monotonic()

    def add(self, text: str, kind: str) -> None:
        kind = "reasoning" if kind == "reasoning" else "answer"
        self.pending[kind] += text
        self.text[kind] += text
        if time.monotonic() - self.last >= self.interval_s:
            self.store.append_partial(self.session, self.index, self.pending["answer"],
                                      self.pending["reasoning"], time.time())  # fmt: skip
            self.pending = {"answer": "", "reasoning": ""}
            self.last = time.monotonic()
