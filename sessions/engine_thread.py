"""The one thread that runs turns, in order, and owns the loaded models.

MLX streams belong to the thread that made them, and one process should hold one copy of a model's
weights, so every model call happens here; callers only enqueue work and read events. A numpy model is
loaded on a loader thread beside it, so that a turn cancelled during a load ends at once (the load
finishes in the background and serves the next turn); an mlx model is loaded here.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

log = logging.getLogger("workbench.sessions")

MAX_LOADED_MODELS = 2  # an LRU: switching back and forth between two models costs no reload
CANCEL_POLL_S = 0.05
T = TypeVar("T")  # how often a wait on a load notices a cancel


class Job:
    """A queued unit of work that can be dropped before it starts (a cancelled queued turn)."""

    def __init__(self, run: Callable[[], None], drop: Callable[[], None]) -> None:
        self._run, self._drop = run, drop
        self._state = "queued"  # -> "running" | "dropped"
        self._lock = threading.Lock()

    def start(self) -> bool:
        with self._lock:
            if self._state != "queued":
                return False
            self._state = "running"
        self._run()
        return True

    def drop(self) -> bool:
        """Drop the job if it has not started; then `drop` (the turn's cancelled Result) runs here."""
        with self._lock:
            if self._state != "queued":
                return False
            self._state = "dropped"
        self._drop()
        return True


class EngineThread:
    def __init__(self, load: Callable[[str, str | None], Any] | None = None) -> None:
        self._load = load
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._waiting: list[Job] = []  # queued or running, oldest first
        self._models: OrderedDict[tuple[str, str | None], Any] = OrderedDict()
        self._loads: dict[tuple[str, str | None], Future[Any]] = {}
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, job: Job) -> int:
        """Run `job` after the jobs before it; returns at once with how many jobs are ahead of it."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="wb-engine", daemon=True)
                self._thread.start()
            ahead = len(self._waiting)
            self._waiting.append(job)
        self._jobs.put(job)
        return ahead

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run `fn` on the engine thread after the jobs before it; its result or error in the future.
        Cancelling the future before `fn` starts drops it (an agent step queued when its turn stops)."""
        done: Future[T] = Future()

        def run() -> None:
            if not done.set_running_or_notify_cancel():
                return
            try:
                done.set_result(fn())
            except BaseException as exc:  # the caller gets it from the future
                done.set_exception(exc)

        self.submit(Job(run, done.cancel))
        return done

    def pending(self) -> list[Job]:
        with self._lock:
            return list(self._waiting)

    def loaded(self, name: str, backend: str | None) -> bool:
        with self._lock:
            return (name, backend) in self._models

    def model(self, name: str, backend: str | None, cancel: threading.Event | None = None) -> Any | None:
        """The loaded model for (name, backend), loading it if needed; None if `cancel` was set first.
        Call on the engine thread only."""
        key = (name, backend)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            future = self._loads.get(key)
        here = False
        if future is None:
            here = _is_mlx(backend)  # mlx: on this thread, as its streams require
            with self._lock:
                future = self._loads.setdefault(key, Future())
            if not here:
                load = threading.Thread(target=self._load_into, args=(key, future), name="wb-load")
                load.daemon = True
                load.start()
        if here:
            self._load_into(key, future)
        while not future.done():
            if cancel is not None and cancel.wait(CANCEL_POLL_S):
                return None
        return future.result()

    def _load_into(self, key: tuple[str, str | None], future: Future[Any]) -> None:
        try:
            if self._load is None:  # imported on first use: listing and searching sessions never load numpy
                from sessions.options import engine_load

                self._load = engine_load
            model = self._load(*key)
        except BaseException as exc:
            with self._lock:
                self._loads.pop(key, None)
            future.set_exception(exc)
            return
        with self._lock:
            self._loads.pop(key, None)
            self._models[key] = model
            while len(self._models) > MAX_LOADED_MODELS:
                self._models.popitem(last=False)
        future.set_result(model)

    def forget_models(self) -> None:
        with self._lock:
            self._models.clear()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job.start()
            except BaseException:  # a job reports its own errors; this only keeps the thread alive
                log.exception("engine job failed")
            finally:
                with self._lock:
                    self._waiting.remove(job)

    def close(self, timeout: float | None = None) -> bool:
        """Finish queued jobs, then stop the thread; False if it was still busy after `timeout` s."""
        with self._lock:
            thread = self._thread
            self._thread = None
        if thread is not None and thread.is_alive():
            self._jobs.put(None)
            thread.join(timeout)
            if thread.is_alive():
                return False
        self.forget_models()
        return True


def _is_mlx(backend: str | None) -> bool:
    if backend is not None:
        return backend == "mlx"
    from engine.backends import default_backend_name

    return default_backend_name() == "mlx"
