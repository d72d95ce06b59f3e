"""Per-sequence KV cache for every layer of a model: a table of pages (engine.pages).

Page i holds positions [starts[i], starts[i] + cap) of every layer. Growing appends a fresh page of
`page_size` positions (from the model's pool, engine.kvpool): nothing is ever copied to grow, so
appending T tokens costs those T tokens whatever the history. A restore appends the stored blocks
themselves as pages (`append_block`): a mapped file, bytes from Redis, another cache's block, with no
copy. Every page but the last is full.

Attention reads the page table: numpy gets a `PagedLayer` (decode reads the pages in place in C,
prefill gathers them into a reused scratch); mlx gets one contiguous array per layer and step, gathered
from its pages (mlx attention takes contiguous keys only).

The cache remembers the token at each position when it is told (`Model.forward` and restores do), so
that a page whose file was truncated or rewritten under it (`lost_from`) can be recomputed.
"""

from __future__ import annotations

import weakref
from types import ModuleType
from typing import Any

import numpy as np

from engine import pages as pg
from engine.kvpool import ArrayPool
from engine.pages import Page, PagedLayer, PageTable

DEFAULT_PAGE_SIZE = 64  # the block store's block size (kvstore DEFAULT_BLOCK_SIZE): blocks are pages
# The dtypes a cache keeps its pages in. float32 is exact (1e-4 parity with transformers); float16 halves
# the bytes a long decode reads (llama.cpp's default cache type), attention widening each element as it
# reads it, so its only change to the numbers is the keys' and values' rounding to float16.
KV_DTYPES = ("float32", "float16")


class KVCache:
    def __init__(
        self,
        ops: ModuleType,
        n_layers: int,
        n_kv_heads: int,
        head_dim: int,
        dtype: str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        pool: ArrayPool | None = None,
    ) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        self.ops = ops
        self.n_layers = n_layers
        self.n_kv_heads = n_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype or ops.float_dtype
        self.page_size = page_size
        self.pages: list[Page] = []
        self.starts: list[int] = []
        self.lengths = [0] * n_layers
        self.tokens: list[int | None] = []  # the token at each position (None: not known)
        self.pool = pool
        self._table: PageTable | None = None
        self._owned: list[np.ndarray] = []  # pool buffers of this cache's writable pages
        if pool is not None:  # the list, not the cache: the finalizer must not keep the cache alive
            weakref.finalize(self, pool.give_later, self._owned)

    @property
    def offset(self) -> int:
        """Positions held. The last layer is written last, so during a forward pass this is still the
        offset the pass started from."""
        return self.lengths[-1]

    def capacity(self, layer: int = 0) -> int:
        return self.starts[-1] + self.pages[-1].cap if self.pages else 0

    @property
    def numpy(self) -> bool:
        return self.ops.name == "numpy"

    # -- pages -----------------------------------------------------------------------------------
    def _fresh_page(self) -> Page:
        shape = (self.n_layers, self.n_kv_heads, self.page_size, self.head_dim)
        if not self.numpy:
            k = [self.ops.empty(shape[1:], self.dtype) for _ in range(self.n_layers)]
            v = [self.ops.empty(shape[1:], self.dtype) for _ in range(self.n_layers)]
            return Page(k, v, self.page_size, writable=True)
        if self.pool is not None:
            buffer = self.pool.take((2, *shape), self.dtype)
            self._owned.append(buffer)
        else:
            buffer = np.empty((2, *shape), dtype=self.dtype)
        return Page(buffer[0], buffer[1], self.page_size, writable=True, buffer=buffer)

    def _append_page(self, page: Page) -> None:
        self.starts.append(self.capacity())
        self.pages.append(page)
        self._table = None

    def _drop_pages_from(self, i: int) -> None:
        dropped = [p.buffer for p in self.pages[i:] if p.buffer is not None]
        del self.pages[i:], self.starts[i:]
        self._table = None
        if self.pool is not None and dropped:
            owned = {id(b) for b in dropped}
            self._owned[:] = [b for b in self._owned if id(b) not in owned]
            self.pool.give(dropped)

    def _copy_on_write(self, pos: int) -> None:
        """Writing at `pos` inside a page that views a stored block (after a trim into it): that page,
        the last one, is replaced by a fresh page holding the same rows."""
        i = self._page_at(pos)
        page, first = self.pages[i], self.starts[i]
        if page.writable:
            return
        if i != len(self.pages) - 1:
            raise ValueError(f"cannot write position {pos}: later pages already hold positions")
        fresh = self._fresh_page()
        for layer in range(self.n_layers):
            rows = min(page.cap, max(0, self.lengths[layer] - first))
            fresh.k[layer][:, :rows] = page.k[layer][:, :rows]
            fresh.v[layer][:, :rows] = page.v[layer][:, :rows]
        self._drop_pages_from(i)
        self._append_page(fresh)

    def table(self) -> PageTable:
        if self._table is None:
            self._table = PageTable.of(self.pages, self.starts)
        return self._table

    # -- writes ----------------------------------------------------------------------------------
    def update_and_fetch(self, layer: int, k: Any, v: Any) -> tuple[Any, Any]:
        """Append k, v [n_kv_heads, T, head_dim] to `layer`; return all of its keys and values so far:
        numpy `PagedLayer`s (the page table), mlx arrays gathered from the pages."""
        start = self.lengths[layer]
        end = start + k.shape[1]
        if start < self.capacity():
            self._copy_on_write(start)
        while self.capacity() < end:
            self._append_page(self._fresh_page())
        i = self._page_at(start)
        pos = start
        while pos < end:
            page = self.pages[i]
            r0 = pos - self.starts[i]
            n = min(page.cap - r0, end - pos)
            page.k[layer][:, r0 : r0 + n] = k[:, pos - start : pos - start + n]
            page.v[layer][:, r0 : r0 + n] = v[:, pos - start : pos - start + n]
            pos, i = pos + n, i + 1
        self.lengths[layer] = end
        return self.fetch(layer)

    def fetch(self, layer: int) -> tuple[Any, Any]:
        length = self.lengths[layer]
        if self.numpy:
            table, dtype = self.table(), np.dtype(self.dtype)
            return PagedLayer(table, layer, length, 0, dtype), PagedLayer(table, layer, length, 1, dtype)
        ks, vs = [], []
        for page, start in zip(self.pages, self.starts, strict=True):
            rows = min(page.cap, length - start)
            if rows <= 0:
                break
            ks.append(page.k[layer][:, :rows])
            vs.append(page.v[layer][:, :rows])
        if len(ks) == 1:
            return ks[0], vs[0]
        return self.ops.concatenate(ks, axis=1), self.ops.concatenate(vs, axis=1)

    def _page_at(self, pos: int) -> int:
        for i in range(len(self.pages) - 1, -1, -1):
            if self.starts[i] <= pos:
                return i
        raise ValueError(f"position {pos} is not in the cache's pages")

    def append_block(
        self, k: np.ndarray, v: np.ndarray, tokens: list[int] | None = None, source: Any = None
    ) -> bool:
        """Append positions given as one stored block, [n_layers, n_kv_heads, n, head_dim] each. The
        arrays become a page as they are when they can (numpy, the cache's dtype, C-contiguous, the
        cache's last page full, a file mapping that can be guarded), else they are copied into fresh
        pages. `source` keeps their memory alive. Returns True when nothing was copied."""
        self._check_block(k, v)
        n = k.shape[2]
        shared = (
            self.numpy
            and n > 0
            and k.dtype == np.dtype(self.dtype)
            and v.dtype == k.dtype
            and k.flags.c_contiguous
            and v.flags.c_contiguous
            and all(length == self.capacity() for length in self.lengths)
            and pg.guard(source)
        )
        if not shared:
            self.extend(k, v, tokens)
            return False
        self._append_page(Page(k, v, n, writable=False, source=source))
        self.lengths = [self.offset + n] * self.n_layers
        self._note_tokens(n, tokens)
        return True

    def _check_block(self, k: np.ndarray, v: np.ndarray) -> None:
        expected = (self.n_layers, self.n_kv_heads, k.shape[2], self.head_dim)
        if tuple(k.shape) != expected or tuple(v.shape) != expected:
            raise ValueError(f"a KV block must be k and v of shape {expected}, got {k.shape} and {v.shape}")

    def extend(self, k: np.ndarray, v: np.ndarray, tokens: list[int] | None = None) -> None:
        """Append positions given in `export`'s layout, copying them into the cache's own pages."""
        self._check_block(k, v)
        for layer in range(self.n_layers):
            self.update_and_fetch(
                layer, self.ops.asarray(k[layer], self.dtype), self.ops.asarray(v[layer], self.dtype)
            )
        self._note_tokens(k.shape[2], tokens)
        self.ops.eval(*self.arrays())

    def _note_tokens(self, n: int, tokens: list[int] | None) -> None:
        if tokens is not None and len(tokens) != n:
            raise ValueError(f"{len(tokens)} token ids given for {n} positions")
        before = self.offset - n
        del self.tokens[before:]
        self.tokens.extend([None] * (before - len(self.tokens)))
        self.tokens.extend(tokens if tokens is not None else [None] * n)

    def record_tokens(self, ids: list[int]) -> None:
        """After a pass appended `ids`: the tokens of the last len(ids) positions."""
        self._note_tokens(len(ids), list(ids))

    # -- reads -----------------------------------------------------------------------------------
    def export(self, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """Copies of positions [start, end) as numpy [n_layers, n_kv_heads, end-start, head_dim]."""
        if not 0 <= start <= end <= self.offset:
            raise ValueError(f"export range [{start}, {end}) outside the cache's {self.offset} positions")
        shape = (self.n_layers, self.n_kv_heads, end - start, self.head_dim)
        k_out, v_out = np.empty(shape, dtype=self.dtype), np.empty(shape, dtype=self.dtype)
        for page, first in zip(self.pages, self.starts, strict=True):
            lo, hi = max(start, first), min(end, first + page.cap)
            if lo >= hi:
                continue
            src, dst = slice(lo - first, hi - first), slice(lo - start, hi - start)
            for layer in range(self.n_layers):
                k_out[layer, :, dst] = np.asarray(page.k[layer][:, src])
                v_out[layer, :, dst] = np.asarray(page.v[layer][:, src])
        return k_out, v_out

    def arrays(self) -> list[Any]:
        """Every page's arrays (mlx evaluates them after a pass)."""
        if self.numpy:
            return []
        return [a for p in self.pages for a in (*p.k, *p.v)]

    @property
    def shared_pages(self) -> int:
        """Pages that view stored blocks rather than memory of this cache's own."""
        return sum(1 for p in self.pages if not p.writable)

    def trim(self, n: int) -> None:
        """Keep only the first n positions (pages wholly past them go back to the pool)."""
        if not 0 <= n <= self.offset:
            raise ValueError(f"cannot trim a cache of {self.offset} positions to {n}")
        self.lengths = [min(length, n) for length in self.lengths]
        del self.tokens[n:]
        self._drop_pages_from(next((i for i, s in enumerate(self.starts) if s >= n), len(self.pages)))

    def lost_from(self) -> int | None:
        """The first position of a page whose numbers can no longer be trusted (its file was truncated
        or rewritten, or part of its mapping was lost), else None."""
        for page, start in zip(self.pages, self.starts, strict=True):
            if page.source is not None and not pg.trustworthy(page.source):
                return start
        return None

    def tokens_between(self, start: int, end: int) -> list[int] | None:
        """The tokens of positions [start, end), or None when some are not known."""
        got = self.tokens[start:end]
        if len(got) != end - start or any(t is None for t in got):
            return None
        return [int(t) for t in got if t is not None]

    def nbytes(self) -> int:
        """Bytes of the positions held (both keys and values, all layers)."""
        itemsize = np.dtype(self.dtype).itemsize
        return 2 * self.n_layers * self.n_kv_heads * self.offset * self.head_dim * itemsize
