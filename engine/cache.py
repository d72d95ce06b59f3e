"""Per-sequence KV cache for every layer of a model.

Each layer holds preallocated key/value buffers [n_kv_heads, capacity, head_dim]. When a write does not
fit, capacity at least doubles (rounded up to `step`), so appending T tokens one by one copies O(T) values
in total, never O(T^2). Attention reads views of the first `length` positions.

With a pool (engine.kvpool, the numpy backend), buffers come from arrays earlier caches of the same
model gave back, and go back to it when outgrown or when the cache is gone.
"""

from __future__ import annotations

import weakref
from types import ModuleType
from typing import Any

import numpy as np

from engine.kvpool import ArrayPool


class KVCache:
    def __init__(
        self,
        ops: ModuleType,
        n_layers: int,
        n_kv_heads: int,
        head_dim: int,
        dtype: str | None = None,
        step: int = 256,
        pool: ArrayPool | None = None,
    ) -> None:
        self.ops = ops
        self.n_layers = n_layers
        self.n_kv_heads = n_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype or ops.float_dtype
        self.step = step
        self.keys: list[Any] = [None] * n_layers
        self.values: list[Any] = [None] * n_layers
        self.lengths = [0] * n_layers
        self.pool = pool
        if pool is not None:  # the lists, not the cache: the finalizer must not keep the cache alive
            weakref.finalize(self, _give_back, pool, self.keys, self.values)

    @property
    def offset(self) -> int:
        """Positions held. The last layer is written last, so during a forward pass this is still the
        offset the pass started from."""
        return self.lengths[-1]

    def capacity(self, layer: int) -> int:
        keys = self.keys[layer]
        return 0 if keys is None else keys.shape[1]

    def _reserve(self, layer: int, needed: int, headroom: int = 0) -> None:
        capacity = self.capacity(layer)
        if needed <= capacity:
            return
        new_capacity = max(needed, 2 * capacity, self.step)
        new_capacity = -(-new_capacity // self.step) * self.step
        keys, values = self._allocate(new_capacity, headroom), self._allocate(new_capacity, headroom)
        length = self.lengths[layer]
        if length:
            keys[:, :length] = self.keys[layer][:, :length]
            values[:, :length] = self.values[layer][:, :length]
        outgrown = [self.keys[layer], self.values[layer]]
        self.keys[layer], self.values[layer] = keys, values
        if self.pool is not None:
            self.pool.give(outgrown)

    def _allocate(self, capacity: int, headroom: int = 0) -> Any:
        if self.pool is not None:
            fresh = -(-(capacity + headroom) // self.step) * self.step
            return self.pool.take(self.n_kv_heads, capacity, self.head_dim, self.dtype, fresh)
        return self.ops.empty((self.n_kv_heads, capacity, self.head_dim), self.dtype)

    def reserve(self, n: int, headroom: int = 0) -> None:
        """Room for `n` positions in every layer in one allocation: a restore knows its size up front,
        and growing by doubling while blocks arrive would copy and fault in memory several times.
        `headroom`: positions more, when the room has to be allocated afresh anyway (untouched pages
        cost nothing), so the tokens that follow a restore append without regrowing the cache; arrays
        the pool keeps are still preferred, as their pages are already mapped."""
        for layer in range(self.n_layers):
            self._reserve(layer, n, headroom)

    def update_and_fetch(self, layer: int, k: Any, v: Any) -> tuple[Any, Any]:
        """Append k, v [n_kv_heads, T, head_dim] to `layer`; return all of its keys and values so far."""
        start = self.lengths[layer]
        end = start + k.shape[1]
        self._reserve(layer, end)
        self.keys[layer][:, start:end] = k
        self.values[layer][:, start:end] = v
        self.lengths[layer] = end
        return self.keys[layer][:, :end], self.values[layer][:, :end]

    def export(self, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """Copies of positions [start, end) as numpy [n_layers, n_kv_heads, end-start, head_dim]."""
        if not 0 <= start <= end <= self.offset:
            raise ValueError(f"export range [{start}, {end}) outside the cache's {self.offset} positions")
        shape = (self.n_layers, self.n_kv_heads, end - start, self.head_dim)
        k_out = np.empty(shape, dtype=self.dtype)
        v_out = np.empty(shape, dtype=self.dtype)
        if end > start:
            for layer in range(self.n_layers):
                k_out[layer] = np.asarray(self.keys[layer][:, start:end])
                v_out[layer] = np.asarray(self.values[layer][:, start:end])
        return k_out, v_out

    def extend(self, k: np.ndarray, v: np.ndarray) -> None:
        """Append positions given in `export`'s layout (the restore path)."""
        expected = (self.n_layers, self.n_kv_heads, k.shape[2], self.head_dim)
        if tuple(k.shape) != expected or tuple(v.shape) != expected:
            raise ValueError(f"extend expects k and v of shape {expected}, got {k.shape} and {v.shape}")
        for layer in range(self.n_layers):
            self.update_and_fetch(
                layer, self.ops.asarray(k[layer], self.dtype), self.ops.asarray(v[layer], self.dtype)
            )
        self.ops.eval(*self.keys, *self.values)

    @property
    def parallel_writes(self) -> bool:
        """Whether `write` may run on several threads at once: numpy arrays are written in place."""
        return self.ops.name == "numpy"

    def write(self, start: int, k: np.ndarray, v: np.ndarray) -> None:
        """Write positions [start, start + T) of every layer from `export`'s layout without changing the
        cache's length (`commit` does): restore threads fill disjoint ranges of a reserved cache."""
        end = start + k.shape[2]
        expected = (self.n_layers, self.n_kv_heads, k.shape[2], self.head_dim)
        if tuple(k.shape) != expected or tuple(v.shape) != expected:
            raise ValueError(f"write expects k and v of shape {expected}, got {k.shape} and {v.shape}")
        if any(self.capacity(layer) < end for layer in range(self.n_layers)):
            raise ValueError(f"write of positions [{start}, {end}) beyond the reserved capacity")
        for layer in range(self.n_layers):
            self.keys[layer][:, start:end] = k[layer]
            self.values[layer][:, start:end] = v[layer]

    def commit(self, n: int) -> None:
        """After `write`s: the cache holds positions [0, n) in every layer."""
        if any(self.capacity(layer) < n for layer in range(self.n_layers)):
            raise ValueError(f"cannot commit {n} positions: fewer were reserved")
        self.lengths = [n] * self.n_layers

    def trim(self, n: int) -> None:
        """Keep only the first n positions."""
        if not 0 <= n <= self.offset:
            raise ValueError(f"cannot trim a cache of {self.offset} positions to {n}")
        self.lengths = [min(length, n) for length in self.lengths]

    def nbytes(self) -> int:
        """Bytes of the positions held (both keys and values, all layers)."""
        itemsize = np.dtype(self.dtype).itemsize
        return 2 * self.n_layers * self.n_kv_heads * self.offset * self.head_dim * itemsize


def _give_back(pool: ArrayPool, keys: list[Any], values: list[Any]) -> None:
    pool.give_later(keys)  # a finalizer: no lock here (kvpool.ArrayPool)
    pool.give_later(values)
