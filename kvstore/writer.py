"""The block store's background writer: encodes blocks and puts them to tiers off the caller's thread.

Jobs are an `EncodeJob` (KV exported from a cache) or a `RawJob` (block bytes being promoted to faster
tiers). A (tier, key) pair is claimed when queued, so a block saved twice before the first write lands (two
sessions, a fork) is still written once.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from kvstore.format import encode_block

log = logging.getLogger(__name__)


@dataclass
class EncodeJob:
    key: str
    kind: int  # KIND_BLOCK | KIND_TAIL
    identity: str
    dtype: str  # storage dtype
    k: np.ndarray  # [layers, kv_heads, tokens, head_dim], a copy the caller no longer touches
    v: np.ndarray
    logits: np.ndarray | None
    targets: list[Any]  # tiers

    def data(self) -> bytes:
        return encode_block(bytes.fromhex(self.key), self.identity, self.dtype, self.k, self.v, self.logits,
                            self.kind)  # fmt: skip


@dataclass
class RawJob:
    key: str
    block: bytes
    targets: list[Any]

    def data(self) -> bytes:
        return self.block


class BlockWriter:
    def __init__(self, count: Callable[[dict[str, int]], None]) -> None:
        self._count = count
        self._queue: queue.Queue[EncodeJob | RawJob | None] = queue.Queue()
        self._pending: set[tuple[str, str]] = set()  # (tier, key) queued but not yet written
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def claim(self, tier: str, key: str) -> bool:
        """True if nobody has queued `key` for `tier` yet (and it is now ours to write)."""
        with self._lock:
            if (tier, key) in self._pending:
                return False
            self._pending.add((tier, key))
            return True

    def enqueue(self, job: EncodeJob | RawJob) -> None:
        if not job.targets:
            return
        with self._lock:  # reader threads enqueue promotions too: start one thread only
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="kv-writer", daemon=True)
                self._thread.start()
        self._queue.put(job)

    def _loop(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                self._write(job)
            except Exception:
                log.warning("KV block write failed", exc_info=True)
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def _write(self, job: EncodeJob | RawJob) -> None:
        key, data = job.key, job.data()
        counts: dict[str, int] = {}
        for tier in job.targets:
            try:
                tier.put(key, data)
                counts[f"written_blocks_{tier.name}"] = counts.get(f"written_blocks_{tier.name}", 0) + 1
                counts[f"written_bytes_{tier.name}"] = counts.get(f"written_bytes_{tier.name}", 0) + len(data)
            except Exception as exc:
                log.warning("KV tier %s failed writing block %s: %s", tier.name, key[:16], exc)
            finally:
                with self._lock:
                    self._pending.discard((tier.name, key))
        self._count(counts)

    def flush(self) -> None:
        """Wait until every queued write has reached its tiers."""
        self._queue.join()

    def close(self) -> None:
        self.flush()
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join()
