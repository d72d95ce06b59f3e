"""Key/value arrays kept for reuse across a model's caches (numpy backend).

Why: every turn of a conversation builds a new KVCache, and a prefill's cache is hundreds of MB
(2048 tokens of Qwen3-0.6B: 235 MB, 8k: 940 MB). Fresh memory costs page faults on first touch, and on
a VM whose balloon driver hands freed memory back to the host (free page reporting, here after ~3 s
idle) touching it again runs at ~0.3 GB/s against ~4-8 GB/s for memory the process still holds:
measured, a 2048-token prefill took 11.3-12.1 s on a fresh cache after 6 s idle and 9.5-9.9 s on
arrays kept from the last one. llama.cpp and vLLM allocate their KV memory once for the same reason.

The pool keeps the arrays of caches that are gone (and those a growing cache has outgrown) and hands
them to the next cache that fits. It never holds more bytes than the model's caches held at their
peak, so it adds no memory the process had not already needed. An array that something outside its
cache still views is not kept: reusing it would change what that view sees.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np


def _refs(arrays: list[Any], i: int) -> int:
    return sys.getrefcount(arrays[i])


# references to an array held only by one list, as `_refs` counts them on this interpreter
_ONLY_LISTED = _refs([np.empty(0)], 0)


class ArrayPool:
    """Thread-safe: sessions may build and drop caches on several threads."""

    def __init__(self, allocate: Callable[[tuple[int, ...], str], np.ndarray]) -> None:
        self._allocate = allocate
        self._lock = threading.Lock()
        self._kept: list[np.ndarray] = []
        self.kept_bytes = 0
        self.in_use_bytes = 0  # taken and not yet given back
        self.peak_bytes = 0  # the most ever in use at once: the bound on kept_bytes
        self.allocations = 0  # arrays allocated afresh (the rest came from the pool)

    def take(self, heads: int, capacity: int, head_dim: int, dtype: str) -> np.ndarray:
        """A [heads, >= capacity, head_dim] array (contents undefined): the smallest kept one that fits,
        else a new one of exactly `capacity`."""
        kind = (np.dtype(dtype), heads, head_dim)
        with self._lock:
            fits = [a for a in self._kept if (a.dtype, *a.shape[::2]) == kind and a.shape[1] >= capacity]
            if fits:
                array = min(fits, key=lambda a: a.shape[1])
                self._kept = [a for a in self._kept if a is not array]
                self.kept_bytes -= array.nbytes
            else:
                array = None
        if array is None:  # allocate outside the lock: it may take a while
            array = self._allocate((heads, capacity, head_dim), dtype)
            with self._lock:
                self.allocations += 1
        with self._lock:
            self.in_use_bytes += array.nbytes
            self.peak_bytes = max(self.peak_bytes, self.in_use_bytes)
        return array

    def give(self, arrays: list[Any]) -> None:
        """Arrays a cache no longer uses (None entries skipped). The list must hold the only reference
        the caller has: any other (a view, say) keeps that array out of the pool."""
        with self._lock:
            for i in range(len(arrays)):
                if arrays[i] is None:
                    continue
                nbytes = arrays[i].nbytes
                self.in_use_bytes -= nbytes
                if _refs(arrays, i) > _ONLY_LISTED:
                    continue
                self._kept.append(arrays[i])
                self.kept_bytes += nbytes
                # over the bound: drop the smallest first, the ones a growing conversation left behind
                while self.kept_bytes > self.peak_bytes:
                    smallest = min(self._kept, key=lambda a: a.nbytes)
                    self._kept = [a for a in self._kept if a is not smallest]
                    self.kept_bytes -= smallest.nbytes
            arrays.clear()

    def clear(self) -> None:
        """Let every kept array go (the memory returns to the allocator)."""
        with self._lock:
            self._kept, self.kept_bytes = [], 0
