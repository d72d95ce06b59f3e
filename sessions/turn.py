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

    def emit(self, event: TurnEvent) -> None:
        with self._cond:
            if self._done:
                raise RuntimeError(
                    f"turn of session {self.session_id} already ended; cannot emit {event.type}"
                )
            if isinstance(event, SessionStarted):
                self.session_id = event.session_id  # the session exists from here on
            self._events.append(event)
            if isinstance(event, Result):
                self._done = True
            self._cond.notify_all()
            waiters = list(self._async_waiters)
        for loop, wake in waiters:
            with contextlib.suppress(RuntimeError):  # that reader's loop is closed: nothing to wake
                loop.call_soon_threadsafe(wake.set)
