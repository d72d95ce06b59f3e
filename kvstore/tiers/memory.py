"""The memory tier of the KV block store: blocks held by this process, LRU under a byte budget.

Implements `kvstore.store.BlockTier`. Keys are the 64-hex chain hashes made by `kvstore.keys`.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict


class MemoryTier:
    """Blocks held in this process, least recently used dropped first once `budget_bytes` is exceeded."""

    name = "memory"

    def __init__(self, budget_bytes: int = 512 << 20) -> None:
        self.budget_bytes = budget_bytes
        self._blocks: OrderedDict[str, bytes] = OrderedDict()
        self._last_used: dict[str, float] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            data = self._blocks.get(key)
            if data is not None:
                self._blocks.move_to_end(key)
                self._last_used[key] = time.monotonic()
            return data

    def put(self, key: str, data: bytes) -> None:
        if len(data) > self.budget_bytes:
            return  # would evict everything else and still not fit
        with self._lock:
            old = self._blocks.pop(key, None)
            if old is not None:
                self._bytes -= len(old)
            self._blocks[key] = data
            self._last_used[key] = time.monotonic()
            self._bytes += len(data)
            while self._bytes > self.budget_bytes:
                evicted, blob = self._blocks.popitem(last=False)
                self._last_used.pop(evicted, None)
                self._bytes -= len(blob)

    def contains(self, keys: list[str]) -> list[bool]:
        with self._lock:
            return [k in self._blocks for k in keys]

    def delete(self, keys: list[str]) -> int:
        removed = 0
        with self._lock:
            for k in keys:
                blob = self._blocks.pop(k, None)
                if blob is not None:
                    self._last_used.pop(k, None)
                    self._bytes -= len(blob)
                    removed += 1
        return removed

    def scan(self) -> list[tuple[str, float]]:
        """Every key with its idle time in seconds (for gc)."""
        now = time.monotonic()
        with self._lock:
            return [(k, now - self._last_used.get(k, now)) for k in self._blocks]

    def stats(self) -> dict:
        with self._lock:
            return {"blocks": len(self._blocks), "bytes": self._bytes, "budget_bytes": self.budget_bytes}

    def clear(self) -> None:
        with self._lock:
            self._blocks.clear()
            self._last_used.clear()
            self._bytes = 0
