"""The Redis tier of the KV block store and the hit/miss counters every process shares.

Blocks are binary values `wb:kv:<key hex>` with a TTL: they are the only keys (besides leases) that carry
one, so the server's `volatile-lru` under `maxmemory` evicts blocks and nothing else. Hit/miss counters
live in the hash `wb:kvstat:counters` (no TTL) so every process adds to the same numbers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import redis

from core import redis_server

BLOCK_PREFIX = b"wb:kv:"
STATS_KEY = b"wb:kvstat:counters"
DEFAULT_TTL_S = 7 * 24 * 3600
_SCAN_COUNT = 1000
_DOWN_FOR_S = 30.0  # after a connection failure, skip Redis this long instead of stalling every call

log = logging.getLogger(__name__)
T = TypeVar("T")


class RedisTierDown(ConnectionError):
    """Redis failed recently; the tier is skipped until it is retried."""


class RedisTier:
    """`kvstore.store.BlockTier` over Redis. A read refreshes the TTL (GETEX), so hot blocks stay."""

    name = "redis"

    def __init__(self, client: redis.Redis | None = None, ttl_s: int = DEFAULT_TTL_S) -> None:
        self.client = client if client is not None else redis_server.connect()
        self.ttl_s = ttl_s
        self._down_until = 0.0

    def _k(self, key: str) -> bytes:
        return BLOCK_PREFIX + key.encode()

    def _call(self, fn: Callable[[], T]) -> T:
        """Run one Redis exchange; a connection failure benches the tier for _DOWN_FOR_S seconds."""
        if time.monotonic() < self._down_until:
            raise RedisTierDown("Redis KV tier skipped after a recent connection failure")
        try:
            return fn()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self._down_until = time.monotonic() + _DOWN_FOR_S
            log.warning("Redis KV tier unreachable (%s); skipping it for %.0f s", exc, _DOWN_FOR_S)
            raise

    def get(self, key: str) -> bytes | None:
        return self._call(lambda: self.client.getex(self._k(key), ex=self.ttl_s))

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        """Pipelined reads: one round trip for many blocks."""
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.getex(self._k(key), ex=self.ttl_s)
        return self._call(pipe.execute)

    def put(self, key: str, data: bytes) -> None:
        self._call(lambda: self.client.set(self._k(key), data, ex=self.ttl_s))

    def contains(self, keys: list[str]) -> list[bool]:
        if not keys:
            return []
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.exists(self._k(key))
        return [bool(n) for n in self._call(pipe.execute)]

    def delete(self, keys: list[str]) -> int:
        removed = 0
        for i in range(0, len(keys), 500):
            removed += self.client.delete(*(self._k(k) for k in keys[i : i + 500]))
        return removed

    def _names(self) -> list[bytes]:
        return list(self.client.scan_iter(match=BLOCK_PREFIX + b"*", count=_SCAN_COUNT))

    def scan(self) -> list[tuple[str, float]]:
        names = self._names()
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.object("idletime", name)
        idle = pipe.execute(raise_on_error=False)
        return [
            (name[len(BLOCK_PREFIX) :].decode(), float(t))
            for name, t in zip(names, idle, strict=True)
            if isinstance(t, int)  # a key evicted between SCAN and OBJECT answers an error
        ]

    def stats(self) -> dict:
        names = self._names()
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.strlen(name)
        sizes = pipe.execute()
        return {"blocks": sum(1 for s in sizes if s), "bytes": sum(sizes), "ttl_s": self.ttl_s}

    def clear(self) -> None:
        self.delete([n[len(BLOCK_PREFIX) :].decode() for n in self._names()])


class RedisStats:
    """`kvstore.store.StatsSink`: counters shared by every process in `wb:kvstat:counters`."""

    def __init__(self, client: redis.Redis | None = None) -> None:
        self.client = client if client is not None else redis_server.connect()

    def incr(self, counts: dict[str, int]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for field, n in counts.items():
            pipe.hincrby(STATS_KEY, field, n)
        pipe.execute()

    def read(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self.client.hgetall(STATS_KEY).items()}

    def reset(self) -> None:
        self.client.delete(STATS_KEY)
