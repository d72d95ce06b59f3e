"""The caller's handle on a running turn: events as they happen, blocking or async, and cancel().

The service's threads append events; any number of readers replay them from the start, so a CLI loop,
a Textual worker and a test can all follow the same turn. Every turn ends with exactly one Result.
Exit codes and Ctrl-C are the headless CLI's concern (workbench/headless.py), not this class's.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future

from sessions.events import Result, SessionStarted, TurnEvent


class Turn:
    def __init__(self, session_id: str | None = None) -> None:
        # None until the session exists (a new one) or its id is resolved (a prefix): never provisional.
        self.session_id = session_id
        self._events: list[TurnEvent] = []
        self._done = False
        self._cond = threading.Condition()
        self._cancel = threading.Event()
        self._cancel_hooks: list[Callable[[], object]] = []
        self._done_hooks: list[Callable[[], object]] = []
        self._approvals: dict[str, Future[str]] = {}  # call id -> the caller's answer, while asked
        self._async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    # -- the caller's side ---------------------------------------------------------------------

    def cancel(self) -> None:
        """Stop the turn in whatever phase it is (queued, model load, retrieval, prefill, decode); a
        reply already begun is recorded as interrupted. The Result follows within a second."""
        with self._cond:
            self._cancel.set()
            hooks, self._cancel_hooks = self._cancel_hooks, []
        for hook in hooks:
            hook()

    def on_cancel(self, hook: Callable[[], object]) -> None:
        """Call `hook` on cancel() (at once if the turn is already cancelled): the service's side."""
        with self._cond:
            if not self._cancel.is_set():
                self._cancel_hooks.append(hook)
                return
        hook()

    def answer(self, call_id: str, decision: str) -> bool:
        """Answer the `approval` event of `call_id`: "approve", "reject" or "always" (this tool, for as
        long as the turn's policy lasts). False when that call is not (or no longer) waiting."""
        if decision not in ("approve", "reject", "always"):
            raise ValueError(f"an approval is approve, reject or always (got {decision!r})")
        with self._cond:
            future = self._approvals.pop(call_id, None)
        if future is None or future.done():
            return False
        future.set_result(decision)
        return True

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        return self._done

    @property
    def result(self) -> Result | None:
        with self._cond:
            last = self._events[-1] if self._events else None
        return last if isinstance(last, Result) else None

    def __iter__(self) -> Iterator[TurnEvent]:
        """Every event, blocking until the next one."""
        index = 0
        while True:
            with self._cond:
                while index >= len(self._events) and not self._done:
                    self._cond.wait()
                batch = self._events[index:]
                finished = self._done
            index += len(batch)
            yield from batch
            if finished and index >= len(self._events):
                return

    def wait(self, timeout: float | None = None) -> Result | None:
        """Block until the turn ends (or `timeout`); returns its Result."""
        with self._cond:
            self._cond.wait_for(lambda: self._done, timeout)
        return self.result

    async def wait_async(self) -> Result:
        """The Result, awaited without blocking the event loop."""
        async for event in self.events_async():
            if isinstance(event, Result):
                return event
        raise RuntimeError("the turn ended without a result")  # emit() makes this unreachable

    async def events_async(self) -> AsyncIterator[TurnEvent]:
        """`async for event in turn.events_async()`: for Textual; never blocks the event loop."""
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        with self._cond:
            self._async_waiters.append((loop, wake))
        index = 0
        try:
            while True:
                wake.clear()
                with self._cond:
                    batch = self._events[index:]
                    finished = self._done
                index += len(batch)
                for event in batch:
                    yield event
                if finished and not batch:
                    return
                if not batch:
                    await wake.wait()
        finally:
            with self._cond:
                self._async_waiters.remove((loop, wake))

    # -- the service's side --------------------------------------------------------------------

    @property
    def cancel_event(self) -> threading.Event:
        return self._cancel

    def ask(self, call_id: str) -> Future[str]:
        """The future `answer(call_id, ...)` resolves; a cancel resolves it with "reject" at once."""
        future: Future[str] = Future()
        with self._cond:
            self._approvals[call_id] = future
        self.on_cancel(lambda: future.done() or future.set_result("reject"))
        return future

    def on_done(self, hook: Callable[[], object]) -> None:
        """Call `hook` once the Result is emitted (at once if it was): the turn queue's side."""
        with self._cond:
            if not self._done:
                self._done_hooks.append(hook)
                return
        hook()

    def emit(self, event: TurnEvent) -> None:
        with self._cond:
            if self._done:
                raise RuntimeError(
                    f"turn of session {self.session_id} already ended; cannot emit {event.type}"
                )
            if isinstance(event, SessionStarted):
                self.session_id = event.session_id  # the session exists from here on
            self._events.append(event)
            hooks: list[Callable[[], object]] = []
            if isinstance(event, Result):
                self._done = True
                hooks, self._done_hooks = self._done_hooks, []
            self._cond.notify_all()
            waiters = list(self._async_waiters)
        for loop, wake in waiters:
            with contextlib.suppress(RuntimeError):  # that reader's loop is closed: nothing to wake
                loop.call_soon_threadsafe(wake.set)
        for hook in hooks:
            hook()
