"""The one thread that owns the models: turns queue up and run on it in order.

MLX streams belong to the thread that made them, and one process should hold one copy of a model's
weights, so every model call happens here; callers only enqueue work and read events.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

log = logging.getLogger("workbench.sessions")

MAX_LOADED_MODELS = 2  # an LRU: switching back and forth between two models costs no reload


class EngineThread:
    def __init__(self, load: Callable[[str, str | None], Any] | None = None) -> None:
        self._load = load
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._models: OrderedDict[tuple[str, str | None], Any] = OrderedDict()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, job: Callable[[], None]) -> None:
        """Run `job` on the engine thread after the jobs before it; returns at once."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="wb-engine", daemon=True)
                self._thread.start()
        self._jobs.put(job)

    def model(self, name: str, backend: str | None) -> Any:
        """The loaded model for (name, backend); call on the engine thread only."""
        key = (name, backend)
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        if self._load is None:
            import engine  # imported on first use: listing and searching sessions never load numpy models

            self._load = engine.load_model
        model = self._load(name, backend)
        self._models[key] = model
        while len(self._models) > MAX_LOADED_MODELS:
            self._models.popitem(last=False)
        return model

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except BaseException:  # a job reports its own errors; this only keeps the thread alive
                log.exception("engine job failed")

    def close(self, timeout: float | None = None) -> None:
        """Finish queued jobs, then stop the thread."""
        with self._lock:
            thread = self._thread
            self._thread = None
        if thread is not None and thread.is_alive():
            self._jobs.put(None)
            thread.join(timeout)
        self._models.clear()
