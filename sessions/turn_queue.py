"""The turns a service has started and not yet ended, and their hand-over to the engine thread.

A turn may leave the engine thread before it ends (an agent turn runs its tools and waits for approvals
on a thread of its own, coming back only to generate), so the engine thread no longer orders a session's
turns by itself: a turn whose session has another turn under way waits, off the engine thread, until
that one ends, and then runs in the order it was queued.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from sessions.engine_thread import EngineThread, Job
from sessions.events import Queued, Result
from sessions.turn import Turn


def cancelled(turn: Turn) -> Result:
    return Result(turn.session_id, finish_reason="cancelled", exit_code=130)


class TurnQueue:
    def __init__(self, engine: EngineThread) -> None:
        self.engine = engine
        self._turns: set[Turn] = set()
        self._running: list[Turn] = []  # started on the engine thread and not ended
        # Turns waiting for another turn of their session to end, oldest first.
        self._parked: list[tuple[Turn, Callable[[], None]]] = []
        self._lock = threading.Lock()

    def add(self, turn: Turn) -> None:
        with self._lock:
            self._turns.add(turn)
        turn.on_done(lambda: self._forget(turn))

    def end(self, turn: Turn, result: Result) -> None:
        """End a turn that never reached the engine thread (cancelled or refused while admitted)."""
        turn.emit(result)

    def _forget(self, turn: Turn) -> None:
        with self._lock:
            self._turns.discard(turn)
            if turn in self._running:
                self._running.remove(turn)
            freed = [(t, run) for t, run in self._parked if t.session_id == turn.session_id]
            self._parked = [p for p in self._parked if p not in freed]
        for waiting, run in freed:  # in their order: the first runs, the others park again behind it
            self._submit(waiting, run)

    def live(self) -> list[Turn]:
        with self._lock:
            return [t for t in self._turns if not t.done]

    def enqueue(self, turn: Turn, run: Callable[[], None]) -> None:
        """Queue `run` (which ends `turn`, maybe later on another thread) on the engine thread, reporting
        how many turns are ahead; a cancel while it waits ends the turn at once, not when its place comes."""
        turn.emit(Queued(turn.session_id, position=len(self.engine.pending())))
        self._submit(turn, run)

    def _submit(self, turn: Turn, run: Callable[[], None]) -> None:
        job = Job(lambda: self._start(turn, run), lambda: self.end(turn, cancelled(turn)))
        self.engine.submit(job)
        turn.on_cancel(job.drop)

    def _start(self, turn: Turn, run: Callable[[], None]) -> None:
        with self._lock:
            busy = turn.session_id is not None and any(
                t.session_id == turn.session_id and not t.done for t in self._running
            )
            if busy:
                self._parked.append((turn, run))
            else:
                self._running.append(turn)
        if busy:
            turn.on_cancel(lambda: self._unpark(turn))
        else:
            run()

    def _unpark(self, turn: Turn) -> None:
        """A parked turn was cancelled: it ends now, not when its session's other turn does."""
        with self._lock:
            parked = [p for p in self._parked if p[0] is turn]
            self._parked = [p for p in self._parked if p[0] is not turn]
        if parked:
            self.end(turn, cancelled(turn))
