"""Key/value pages kept for reuse across a model's caches (numpy backend).

Why: every turn of a conversation builds a new KVCache, and a prefill's cache is hundreds of MB
(2048 tokens of Qwen3-0.6B: 235 MB, 8k: 940 MB). Fresh memory costs page faults on first touch, and on
a VM whose balloon driver hands freed memory back to the host (free page reporting, here after ~3 s
idle) touching it again runs at ~0.3 GB/s against ~4-8 GB/s for memory the process still holds:
measured, a 2048-token prefill took 11.3-12.1 s on a fresh cache after 6 s idle and 9.5-9.9 s on
arrays kept from the last one. llama.cpp and vLLM allocate their KV memory once for the same reason.

The pool keeps the pages of caches that are gone (and those a trim dropped) and hands them to the next
cache of the same model (engine.cache: every writable page of a model has one shape). It never holds
more bytes than the model's caches held at their peak, so it adds no memory the process had not
already needed. An array that something outside its
cache still views is not kept: reusing it would change what that view sees.
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np


def _refs(arrays: list[Any], i: int) -> int:
    return sys.getrefcount(arrays[i])


# references to an array held only by one list, as `_refs` counts them on this interpreter
_ONLY_LISTED = _refs([np.empty(0)], 0)


class ArrayPool:
    """Thread-safe: sessions may build and drop caches on several threads.

    A cache that is gone hands its arrays back through `give_later`, which takes no lock: it runs in
    a finalizer, which the garbage collector may call at any allocation, even on a thread that holds
    the lock inside `take` or `give`. The next call under the lock settles what was handed back."""

    def __init__(self, allocate: Callable[[tuple[int, ...], str], np.ndarray]) -> None:
        self._allocate = allocate
        self._lock = threading.Lock()
        self._kept: list[np.ndarray] = []
        self._returned: deque[list[Any]] = deque()  # lists from give_later, not yet settled
        self._kept_bytes = 0
        self._in_use_bytes = 0  # taken and not yet given back
        self.peak_bytes = 0  # the most ever in use at once: the bound on kept_bytes
        self.allocations = 0  # arrays allocated afresh (the rest came from the pool)

    @property
    def kept_bytes(self) -> int:
        with self._lock:
            self._settle()
            return self._kept_bytes

    @property
    def in_use_bytes(self) -> int:
        with self._lock:
            self._settle()
            return self._in_use_bytes

    def take(self, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        """An array of exactly `shape` and `dtype` (contents undefined): a kept one, else a new one."""
        kind = (np.dtype(dtype), tuple(shape))
        with self._lock:
            self._settle()
            array = next((a for a in self._kept if (a.dtype, a.shape) == kind), None)
            if array is not None:
                self._kept = [a for a in self._kept if a is not array]
                self._kept_bytes -= array.nbytes
        fresh = array is None
        if array is None:  # allocate outside the lock: it may take a while
            array = self._allocate(tuple(shape), dtype)
        with self._lock:
            self.allocations += fresh
            self._in_use_bytes += array.nbytes
            self.peak_bytes = max(self.peak_bytes, self._in_use_bytes)
        return array

    def give(self, arrays: list[Any]) -> None:
        """Arrays a cache no longer uses (None entries skipped). The list must hold the only reference
        the caller has: any other (a view, say) keeps that array out of the pool."""
        with self._lock:
            self._settle()
            self._keep(arrays)

    def give_later(self, arrays: list[Any]) -> None:
        """`give`, for finalizers: settled by the next call that takes the lock."""
        self._returned.append(arrays)

    def clear(self) -> None:
        """Let every kept array go (the memory returns to the allocator)."""
        with self._lock:
            self._settle()
            self._kept, self._kept_bytes = [], 0

    def _settle(self) -> None:
        while self._returned:
            self._keep(self._returned.popleft())

    def _keep(self, arrays: list[Any]) -> None:
        for i in range(len(arrays)):
            if arrays[i] is None:
                continue
            nbytes = arrays[i].nbytes
            self._in_use_bytes -= nbytes
            if _refs(arrays, i) > _ONLY_LISTED:
                continue
            self._kept.append(arrays[i])
            self._kept_bytes += nbytes
            # over the bound: drop the smallest first, the ones a growing conversation left behind
            while self._kept_bytes > self.peak_bytes:
                smallest = min(self._kept, key=lambda a: a.nbytes)
                self._kept = [a for a in self._kept if a is not smallest]
                self._kept_bytes -= smallest.nbytes
        arrays.clear()
