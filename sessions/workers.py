"""The session service's two worker threads, so that nothing slow runs on its caller's thread.

- "wb-service": start-up (connecting, maybe starting, Redis; rebuilding the store from disk), then each
  turn's admission (resolve its id, take its lease) and whatever a UI hands over with `call_async`.
- "wb-blocks": KV block pins and unpins after fork and delete, which may open the block store and hash
  a model's weights (seconds for a multi-GB model).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

log = logging.getLogger("workbench.sessions")

T = TypeVar("T")


class Workers:
    def __init__(self, start: Callable[[], None]) -> None:
        self._service = ThreadPoolExecutor(1, thread_name_prefix="wb-service")
        self._blocks = ThreadPoolExecutor(1, thread_name_prefix="wb-blocks")
        self._pending: list[Future[None]] = []
        self._lock = threading.Lock()
        self.started: Future[None] = self._service.submit(start)

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        """Run `fn` on the service's worker, after start-up and the admissions before it."""
        return self._service.submit(fn, *args, **kwargs)

    async def call_async(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.wrap_future(self.submit(fn, *args, **kwargs))

    def in_background(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn` on the blocks worker; a failure is logged (a pin saves a recompute, nothing more)."""

        def logged() -> None:
            try:
                fn(*args)
            except Exception:
                log.exception("KV block pin/unpin failed")

        future = self._blocks.submit(logged)
        with self._lock:
            self._pending = [f for f in self._pending if not f.done()] + [future]

    def wait_background(self, timeout: float | None = None) -> None:
        with self._lock:
            pending = list(self._pending)
        deadline = None if timeout is None else time.monotonic() + timeout
        for future in pending:
            future.result(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def stop_admitting(self, timeout: float | None) -> bool:
        """Let the admissions already handed over finish (they take milliseconds once started); False
        if start-up had not finished within `timeout` (it is abandoned)."""
        futures.wait([self.started], timeout)
        if not self.started.done():
            self._service.shutdown(wait=False, cancel_futures=True)
            return False
        self._service.shutdown(wait=True)
        return True

    def stop_background(self, wait: bool) -> None:
        self._blocks.shutdown(wait=wait)
