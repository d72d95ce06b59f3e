"""Session leases: one holder at a time, kept alive by a heartbeat, stale ones taken over."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import redis

from core.lease import LeaseKeeper, SessionBusy, lease_key, pid_alive

# Each test here runs on one Redis and on a 3-master Redis Cluster (tests/conftest.py).
pytestmark = pytest.mark.redis_cluster


def test_heartbeat_keeps_the_lease_past_its_expiry_and_release_frees_it(redis_client: redis.Redis) -> None:
    mine = LeaseKeeper(redis_client, lease_ms=300)
    other = LeaseKeeper(redis_client, lease_ms=300)
    other.host = "another-host"  # a holder elsewhere: its pid cannot be checked, only its lease
    mine.acquire("s1")
    time.sleep(0.7)  # more than twice the lease: only renewal keeps it
    with pytest.raises(SessionBusy, match=r"session s1 is in use by pid \d+ on host"):
        other.acquire("s1")
    mine.close()
    other.acquire("s1")
    assert json.loads(redis_client.get(lease_key("s1")))["host"] == "another-host"
    other.close()
    assert redis_client.get(lease_key("s1")) is None


def test_an_expired_lease_is_free_and_a_dead_local_holder_is_taken_over(redis_client: redis.Redis) -> None:
    keeper = LeaseKeeper(redis_client)
    redis_client.set(lease_key("gone"), b"{}", px=50)  # a holder that stopped renewing
    time.sleep(0.1)
    keeper.acquire("gone")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    holder = {"pid": int(dead.stdout), "host": keeper.host, "token": "x"}
    redis_client.set(lease_key("crashed"), json.dumps(holder), px=60_000)  # kill -9 left it behind
    keeper.acquire("crashed")
    assert keeper.holds("crashed")
    keeper.close()


def test_a_killed_holder_its_parent_has_not_reaped_yet_is_dead(redis_client: redis.Redis) -> None:
    keeper = LeaseKeeper(redis_client)
    child = subprocess.Popen(["sleep", "60"])
    try:
        child.kill()
        time.sleep(0.2)  # killed, but a zombie until its parent waits for it
        assert not pid_alive(child.pid)
        holder = {"pid": child.pid, "host": keeper.host, "token": "x"}
        redis_client.set(lease_key("zombie"), json.dumps(holder), px=60_000)
        keeper.acquire("zombie")  # taken over at once, not after the minute its lease has left
        assert keeper.holds("zombie") and pid_alive(os.getpid())
    finally:
        child.wait()
        keeper.close()


def test_a_lease_lost_while_stalled_is_dropped_not_stolen_back(redis_client: redis.Redis) -> None:
    keeper = LeaseKeeper(redis_client, lease_ms=60_000)
    keeper.acquire("s")
    redis_client.set(lease_key("s"), b'{"pid": 1, "host": "elsewhere"}')  # someone else holds it now
    keeper.renew_once()
    assert not keeper.holds("s")
    assert redis_client.get(lease_key("s")) == b'{"pid": 1, "host": "elsewhere"}'
