"""The block store as Workbench wires it: memory -> disk (data_dir/kv) -> Redis, pins in data_dir/kv/refs."""

from __future__ import annotations

import os
from pathlib import Path

import redis

from core import redis_server
from core.env import env_int
from core.errors import UsageError
from core.paths import data_dir
from kvstore.refs import FileRefs
from kvstore.store import DEFAULT_BLOCK_SIZE, BlockStore, BlockTier
from kvstore.tiers.disk import DiskTier
from kvstore.tiers.memory import MemoryTier
from kvstore.tiers.redis import DEFAULT_TTL_S, RedisStats, RedisTier


def kv_dir() -> Path:
    return data_dir() / "kv"


def open_block_store(
    client: redis.Redis | None = None,
    *,
    block_size: int | None = None,
    dtype: str | None = None,
    memory_mb: int | None = None,
    disk_mb: int | None = None,
    ttl_s: int = DEFAULT_TTL_S,
    shared_only: bool = False,
) -> BlockStore:
    """The store as Workbench uses it: memory -> disk (data_dir/kv) -> Redis, pins in data_dir/kv/refs.

    Unset arguments come from WORKBENCH_KV_BLOCK_SIZE, WORKBENCH_KV_DTYPE (float32|float16|int8; unset:
    the engine's KV dtype; the session service loads the engine with a float16 cache for float16, so
    its blocks are the pages as they are, while int8 is a stored form only), WORKBENCH_KV_MEMORY_MB
    (512) and WORKBENCH_KV_DISK_MB (16384).
    `shared_only`: only the tiers every process sees (disk, Redis), as `workbench cache` reports them: a
    new process's memory tier holds nothing.
    """
    client = client if client is not None else redis_server.connect()
    root = kv_dir()
    dtype = dtype or os.environ.get("WORKBENCH_KV_DTYPE") or None
    memory = MemoryTier(_mb(memory_mb, "WORKBENCH_KV_MEMORY_MB", 512))
    tiers: list[BlockTier] = [] if shared_only else [memory]
    tiers += [DiskTier(root, _mb(disk_mb, "WORKBENCH_KV_DISK_MB", 16384)), RedisTier(client, ttl_s)]
    try:
        return BlockStore(
            tiers,
            block_size=block_size or env_int("WORKBENCH_KV_BLOCK_SIZE", DEFAULT_BLOCK_SIZE),
            dtype=dtype,
            refs=FileRefs(root / "refs"),
            stats_sink=RedisStats(client),
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _mb(given: int | None, env: str, default: int) -> int:
    return (given or env_int(env, default)) << 20
