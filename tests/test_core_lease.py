"""core.lease.Lease: one holder at a time; only the holder renews or releases; a wait names the holder."""

from __future__ import annotations

import json
import time

import pytest
import redis

from core.lease import Lease, LeaseBusy

# Each test here runs on one Redis and on a 3-master Redis Cluster (tests/conftest.py).
pytestmark = pytest.mark.redis_cluster


def test_a_lease_that_changed_hands_cannot_be_dropped_or_renewed_by_its_old_holder(
    redis_client: redis.Redis,
) -> None:
    old = Lease(redis_client, "wb:test:lease", lease_ms=100, host="host-a")
    assert old.try_acquire() is None
    time.sleep(0.15)  # it expired: this process stalled past it
    new = Lease(redis_client, "wb:test:lease", lease_ms=60_000, host="host-b")
    assert new.try_acquire() is None
    assert not old.renew() and old.lost.is_set()
    old.release()  # compare-and-act: the key is no longer old's, so nothing is deleted
    assert json.loads(redis_client.get("wb:test:lease"))["host"] == "host-b"
    new.release()
    assert redis_client.get("wb:test:lease") is None


def test_a_live_holder_elsewhere_is_waited_for_and_named(redis_client: redis.Redis) -> None:
    holder = Lease(redis_client, "wb:test:busy", lease_ms=60_000, host="build-box", label="indexing /r")
    assert holder.try_acquire() is None
    waiter = Lease(redis_client, "wb:test:busy", lease_ms=60_000, host="laptop")
    seen: list[str] = []
    with pytest.raises(LeaseBusy, match=r"held by pid \d+ on host build-box \(indexing /r\)"):
        waiter.acquire(0.3, on_wait=lambda h, _: seen.append(h.describe()))
    assert seen and seen[0].startswith(f"pid {holder.holder().pid} on host build-box")
    holder.release()
    assert waiter.acquire(0.3) and waiter.held
    waiter.release()


def test_the_heartbeat_keeps_a_short_lease_alive(redis_client: redis.Redis) -> None:
    lease = Lease(redis_client, "wb:test:beat", lease_ms=600)
    assert lease.try_acquire() is None
    lease.start_heartbeat()
    time.sleep(1.5)  # well past the lease: only renewal keeps it
    assert lease.held and redis_client.get("wb:test:beat") == lease.value
    lease.release()
    assert redis_client.get("wb:test:beat") is None
