"""The pages of a paged KV cache (engine.cache), the page table attention reads, and the guard over pages
that view a mapped file.

A page holds keys and values of `cap` consecutive positions for every layer: numpy [layers, kv_heads,
cap, head_dim] each, the layout of a stored KV block, so a block read from the store (a mapped file,
bytes received from Redis, a block another cache in this process holds) is a page as it is, never
copied. Fresh pages (for new tokens) are writable; a page over a stored block is not, and is copied
(that page only) if a trim ever makes the cache write into it again.

A page may carry a `source` (what the block store gave it): something that keeps its memory alive and,
for a file mapping, says where the mapping is (`mapping`: address, length) and whether the file is
still what was verified (`intact()`). The engine knows nothing else of the store.
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(eq=False)
class Page:
    k: Any  # numpy [L, Hkv, cap, D], or (mlx) a list of [Hkv, cap, D] arrays, one per layer
    v: Any
    cap: int
    writable: bool
    source: Any = None  # keeps a stored block's memory alive; may be checked (`intact`, `mapping`)
    buffer: np.ndarray | None = None  # a writable numpy page's [2, L, Hkv, cap, D] array, from the pool


def mapping_of(source: Any) -> tuple[int, int] | None:
    return getattr(source, "mapping", None)


def intact(source: Any) -> bool:
    check = getattr(source, "intact", None)
    return check() if check is not None else True


# -- the guard ---------------------------------------------------------------------------------------
_lock = threading.Lock()
_slots: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def _guard_lib() -> ctypes.CDLL | None:
    from engine.backends import kernels  # here: `python -m engine.backends.kernels` imports engine first

    lib = kernels.load()
    if lib is not None and lib.guard_range.restype is not ctypes.c_int64:
        for name in ("guard_range", "guard_lost"):
            getattr(lib, name).restype = ctypes.c_int64
    return lib


def guard(source: Any) -> bool:
    """Make faults on `source`'s file mapping harmless (see kernels_paged.c): True once guarded, False
    when it cannot be (no C kernels, every slot taken): the caller must then copy the block instead."""
    mapping = mapping_of(source)
    if mapping is None:
        return True
    lib = _guard_lib()
    if lib is None:
        return False
    with _lock:
        if source in _slots:
            return True
        slot = lib.guard_range(mapping[0], mapping[1])
        if slot < 0:
            return False
        _slots[source] = slot
        weakref.finalize(source, lib.guard_release, slot)
    return True


def trustworthy(source: Any) -> bool:
    """False when the page's numbers can no longer be trusted: its file changed, or part was lost."""
    if source is None:
        return True
    if not intact(source):
        return False
    slot = _slots.get(source)
    lib = _guard_lib() if slot is not None else None
    return lib is None or lib.guard_lost(slot) == 0


# -- the page table, as attention reads it -----------------------------------------------------------
@dataclass(frozen=True)
class PageTable:
    """Addresses of every page's keys and values, first positions and rows (int64 arrays for C)."""

    kbase: np.ndarray
    vbase: np.ndarray
    start: np.ndarray
    cap: np.ndarray
    pages: tuple[Page, ...]  # keeps the memory alive while a kernel reads it

    @property
    def addresses(self) -> tuple[int, int, int, int]:
        """The four arrays' addresses, as the C kernels take them (computed once per table: numpy's
        .ctypes costs microseconds, and decode asks for them in every layer)."""
        cached = self.__dict__.get("_addresses")
        if cached is None:
            cached = tuple(a.ctypes.data for a in (self.kbase, self.vbase, self.start, self.cap))
            object.__setattr__(self, "_addresses", cached)
        return cached

    @staticmethod
    def of(pages: list[Page], starts: list[int]) -> PageTable:
        return PageTable(
            np.array([p.k.ctypes.data for p in pages], dtype=np.int64),
            np.array([p.v.ctypes.data for p in pages], dtype=np.int64),
            np.array(starts, dtype=np.int64),
            np.array([p.cap for p in pages], dtype=np.int64),
            tuple(pages),
        )


_scratch = threading.local()
_GATHER = {np.dtype(np.float32): "gather_pages", np.dtype(np.float16): "gather_pages_f16"}  # kernels_paged.c


def _gather_buffers(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-thread [Hkv, S, D] float32 buffers reused by every layer's prefill (fresh memory faults in on
    first touch: reusing warm buffers keeps the gather at memory speed)."""
    n = shape[0] * shape[1] * shape[2]
    buf = getattr(_scratch, "kv", None)
    if buf is None or buf.shape[1] < n:
        buf = np.empty((2, max(n, 1)), dtype=np.float32)
        _scratch.kv = buf
    return buf[0, :n].reshape(shape), buf[1, :n].reshape(shape)


class PagedLayer:
    """The keys (side 0) or values (side 1) of one layer's first `length` positions, read through the
    page table. numpy_attention reads them in place (decode) or gathered (prefill, widened to float32
    from float16 pages); `np.asarray` gives a contiguous copy in the pages' dtype."""

    def __init__(self, table: PageTable, layer: int, length: int, side: int, dtype: np.dtype) -> None:
        self.table, self.layer, self.length, self.side, self.dtype = table, layer, length, side, dtype
        first = table.pages[0].k if table.pages else None
        self.kv_heads = first.shape[1] if first is not None else 0
        self.head_dim = first.shape[3] if first is not None else 0

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.kv_heads, self.length, self.head_dim)

    def gather(self, into_scratch: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Keys and values [Hkv, S, D] float32 contiguous (float16 pages widened on the way): in this
        thread's reused buffers (valid until the next gather on this thread), or fresh arrays."""
        shape = self.shape
        if into_scratch:
            k, v = _gather_buffers(shape)
        else:
            k, v = np.empty(shape, np.float32), np.empty(shape, np.float32)
        from engine.backends import kernels, numpy_threads

        lib = kernels.load()
        t = self.table
        kernel = _GATHER.get(self.dtype)
        if lib is not None and kernel is not None and self.length:
            getattr(lib, kernel)(
                *t.addresses,
                len(t.pages), self.layer, k.ctypes.data, v.ctypes.data, self.kv_heads, self.length,
                self.head_dim, numpy_threads.DECODE_THREADS,
            )  # fmt: skip
            return k, v
        for page, start in zip(t.pages, t.start.tolist(), strict=True):
            rows = min(page.cap, self.length - start)
            if rows <= 0:
                break
            k[:, start : start + rows] = page.k[self.layer, :, :rows]
            v[:, start : start + rows] = page.v[self.layer, :, :rows]
        return k, v

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.gather(into_scratch=False)[self.side]  # float32 (float16 pages widen exactly)
        return out.astype(self.dtype if dtype is None else dtype, copy=False)
