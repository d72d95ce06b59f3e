"""The caller's handle on a running turn: events as they happen, blocking or async, and cancel().

The engine thread appends events; any number of readers replay them from the start, so a CLI loop,
a Textual worker and a test can all follow the same turn. Every turn ends with exactly one Result.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator

from sessions.events import Result, TurnEvent

_POLL_S = 0.1  # lets the blocking iterator notice Ctrl-C promptly


class Turn:
    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.interrupted = False  # Ctrl-C arrived while a blocking reader waited
        self._events: list[TurnEvent] = []
        self._done = False
        self._cond = threading.Condition()
        self._cancel = threading.Event()
        self._async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    # -- the caller's side ---------------------------------------------------------------------

    def cancel(self) -> None:
        """Stop generating within one decode step; the partial reply is recorded as interrupted."""
        self._cancel.set()

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

    @property
    def exit_code(self) -> int:
        """0, 1, 2, 3, or 130 when the turn was cancelled or interrupted (the CLI's exit code)."""
        result = self.result
        if result is None:
            return 1
        if self.interrupted or result.finish_reason == "cancelled":
            return 130
        return result.exit_code

    def __iter__(self) -> Iterator[TurnEvent]:
        """Every event, blocking until the next one. Ctrl-C cancels the turn and keeps reading
        (so the interrupted reply is recorded and the Result still arrives); a second Ctrl-C raises."""
        index = 0
        while True:
            try:
                with self._cond:
                    while index >= len(self._events) and not self._done:
                        self._cond.wait(_POLL_S)
                    batch = self._events[index:]
                    finished = self._done
            except KeyboardInterrupt:
                if self.interrupted:
                    raise
                self.interrupted = True
                self.cancel()
                continue
            index += len(batch)
            yield from batch
            if finished and index >= len(self._events):
                return

    def wait(self, timeout: float | None = None) -> Result | None:
        """Block until the turn ends (or `timeout`); returns its Result."""
        with self._cond:
            self._cond.wait_for(lambda: self._done, timeout)
        return self.result

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

    # -- the engine thread's side --------------------------------------------------------------

    @property
    def cancel_event(self) -> threading.Event:
        return self._cancel

    def emit(self, event: TurnEvent) -> None:
        with self._cond:
            if self._done:
                raise RuntimeError(
                    f"turn of session {self.session_id} already ended; cannot emit {event.type}"
                )
            self._events.append(event)
            if isinstance(event, Result):
                self._done = True
            self._cond.notify_all()
            waiters = list(self._async_waiters)
        for loop, wake in waiters:
            with contextlib.suppress(RuntimeError):  # that reader's loop is closed: nothing to wake
                loop.call_soon_threadsafe(wake.set)
