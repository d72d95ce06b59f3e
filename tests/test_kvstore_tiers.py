"""Block tiers on their own: budgets, LRU order, idle times for gc, pins shared through files."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from kvstore.refs import FileRefs
from kvstore.tiers import DiskTier, MemoryTier
from kvstore.tiers.redis import RedisTier

# Each test here runs on one Redis and on a 3-master Redis Cluster (tests/conftest.py).
pytestmark = pytest.mark.redis_cluster


def key(i: int) -> str:
    return f"{i:064x}"


def test_memory_tier_evicts_least_recently_used_within_its_budget() -> None:
    tier = MemoryTier(budget_bytes=300)
    for i in range(3):
        tier.put(key(i), bytes(100))
    assert tier.get(key(0)) is not None  # 0 is now the most recent
    tier.put(key(3), bytes(100))
    assert tier.contains([key(i) for i in range(4)]) == [True, False, True, True]
    assert tier.stats() == {"blocks": 3, "bytes": 300, "budget_bytes": 300}
    tier.put(key(9), bytes(301))  # larger than the whole budget: not stored, nothing evicted
    assert tier.stats()["blocks"] == 3


def test_disk_tier_reports_idle_times_and_deletes(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, budget_bytes=10_000)
    tier.put(key(1), b"a" * 10)
    tier.put(key(2), b"b" * 20)
    time.sleep(0.05)
    assert tier.get(key(2)) == b"b" * 20
    idle = dict(tier.scan())
    assert idle[key(1)] > idle[key(2)] >= 0
    assert tier.delete([key(1), key(7)]) == 1
    assert tier.contains([key(1), key(2)]) == [False, True]
    assert tier.stats()["bytes"] == 20
    tier.clear()
    assert tier.stats()["blocks"] == 0 and not list((tmp_path / "blocks").rglob("*.blk"))


def test_a_block_file_deleted_behind_the_index_is_a_miss(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path)
    tier.put(key(1), b"x" * 10)
    tier._path(key(1)).unlink()
    assert tier.get(key(1)) is None and tier.contains([key(1)]) == [False]


def test_pins_are_shared_through_files(tmp_path: Path) -> None:
    a, b = FileRefs(tmp_path), FileRefs(tmp_path)  # e.g. two processes
    a.set("session-1", [key(1), key(2)])
    b.set("session/2 with odd chars", [key(2), key(3)])
    assert a.pinned() == {key(1), key(2), key(3)}
    assert sorted(b.holders()) == ["session-1", "session/2 with odd chars"]
    a.set("session-1", [key(4)])  # a session's pin is replaced, not added to
    assert b.keys_of("session-1") == [key(4)]
    assert b.remove("session-1") and not b.remove("session-1")
    assert a.pinned() == {key(2), key(3)}


def test_redis_tier_scan_stats_and_clear_touch_only_block_keys(redis_client: redis.Redis) -> None:
    tier = RedisTier(redis_client, ttl_s=100)
    redis_client.set(b"wb:s:other", b"session data")
    tier.put(key(1), b"x" * 10)
    tier.put(key(2), b"y" * 5)
    assert tier.get_many([key(1), key(3)]) == [b"x" * 10, None]
    assert tier.stats() == {"blocks": 2, "bytes": 15, "ttl_s": 100}
    assert sorted(k for k, _ in tier.scan()) == [key(1), key(2)]
    tier.clear()
    assert tier.stats()["blocks"] == 0 and redis_client.get(b"wb:s:other") == b"session data"
