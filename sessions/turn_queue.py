"""The turns a service has started and not yet ended, and their hand-over to the engine thread."""

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
        self._lock = threading.Lock()

    def add(self, turn: Turn) -> None:
        with self._lock:
            self._turns.add(turn)

    def end(self, turn: Turn, result: Result) -> None:
        """End a turn that never reached the engine thread (cancelled or refused while admitted)."""
        turn.emit(result)
        self._forget(turn)

    def _forget(self, turn: Turn) -> None:
        with self._lock:
            self._turns.discard(turn)

    def live(self) -> list[Turn]:
        with self._lock:
            return [t for t in self._turns if not t.done]

    def enqueue(self, turn: Turn, run: Callable[[], None]) -> None:
        """Queue `run` (which ends `turn`) on the engine thread, reporting how many turns are ahead; a
        cancel while it waits ends the turn at once, not when its place comes."""

        def run_and_forget() -> None:
            try:
                run()
            finally:
                self._forget(turn)

        job = Job(run_and_forget, lambda: self.end(turn, cancelled(turn)))
        turn.emit(Queued(turn.session_id, position=len(self.engine.pending())))
        self.engine.submit(job)
        turn.on_cancel(job.drop)
