"""KV blocks: a resumed history produces exactly what recomputing it produces, from any tier, and bad or
foreign blocks are never used."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from kvstore.format import HEADER_LEN
from kvstore.open import open_block_store
from kvstore.refs import FileRefs
from kvstore.space import space_of
from kvstore.store import BlockStore
from kvstore.tiers import DiskTier, MemoryTier
from kvstore.tiers.redis import RedisStats, RedisTier
from tests.kv_helpers import BS, greedy, history, reference, save_history, store_with, tiny_model

# Each test here runs on one Redis and on a 3-master Redis Cluster (tests/conftest.py).
pytestmark = pytest.mark.redis_cluster

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0)


def disk(home: Path, budget: int = 1 << 30) -> DiskTier:
    return DiskTier(home / "kv", budget)


def resume_and_continue(model, store: BlockStore, ids: list[int], n: int = 12):
    """Restore, prefill what was not cached, then greedy-decode n tokens."""
    cache = model.make_cache()
    res = store.restore(space_of(model), cache, ids)
    last = res.last_logits if res.last_logits is not None else model.forward(ids[cache.offset :], cache)
    tokens, logits = greedy(model, cache, last, n)
    return res, last, tokens, logits


def assert_exact(model, ids: list[int], last, tokens, logits) -> None:
    ref_last, ref_tokens, ref_logits = reference(model, ids, len(tokens))
    assert tokens == ref_tokens
    assert np.abs(last - ref_last).max() <= 1e-4
    assert max(np.abs(a - b).max() for a, b in zip(logits, ref_logits, strict=True)) <= 1e-4


@pytest.mark.parametrize("tier_names", [("memory", "disk", "redis"), ("disk",), ("redis",)])
def test_resume_from_each_tier_equals_recompute(model, workbench_env, redis_client, tier_names) -> None:
    make = {
        "memory": MemoryTier,
        "disk": lambda: disk(workbench_env),
        "redis": lambda: RedisTier(redis_client),
    }
    ids = history(3 * BS + 17)
    save_history(model, store_with([make[n]() for n in tier_names]), ids)
    # A fresh store over the same tiers' data (memory can only be shared within the process).
    store = store_with([make[n]() for n in tier_names if n != "memory"] or [MemoryTier()])
    res, last, tokens, logits = resume_and_continue(model, store, ids)
    if tier_names == ("memory", "disk", "redis"):
        assert res.by_tier == {"disk": len(ids)}  # fastest tier holding the blocks in this process
    else:
        assert res.by_tier == {tier_names[0]: len(ids)}
    assert res.cached_tokens == len(ids) and res.last_logits is not None and res.bytes_read > 0
    assert_exact(model, ids, last, tokens, logits)


def test_fully_cached_history_needs_no_recompute_and_partial_tail_is_found(model, redis_client) -> None:
    store = store_with([MemoryTier()])
    ids = history(2 * BS + 5)
    last = save_history(model, store, ids)
    cache = model.make_cache()
    res = store.restore(space_of(model), cache, ids)
    assert cache.offset == len(ids) and np.array_equal(res.last_logits, last)
    # The next turn extends the history: with history_len its 5-token tail is reused as well.
    longer = ids + history(9, seed=7)
    cache = model.make_cache()
    assert store.restore(space_of(model), cache, longer).cached_tokens == 2 * BS
    cache = model.make_cache()
    res = store.restore(space_of(model), cache, longer, history_len=len(ids))
    assert res.cached_tokens == len(ids) and res.last_logits is None
    last = model.forward(longer[len(ids) :], cache)
    assert_exact(model, longer, last, *greedy(model, cache, last, 8))


def test_resume_in_a_new_process(model, workbench_env, redis_client) -> None:
    ids = history(2 * BS + 30)
    store = open_block_store(redis_client, block_size=BS)
    save_history(model, store, ids)
    out = subprocess.run(
        [sys.executable, "-m", "tests.kv_helpers", "resume", str(model.path), json.dumps(ids)],
        cwd=REPO,
        env={**os.environ, "WORKBENCH_KV_BLOCK_SIZE": str(BS)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    child = json.loads(out.stdout)
    assert child["cached_tokens"] == len(ids) and child["by_tier"] == {"disk": len(ids)}
    assert child["shared_pages"] == 4  # three blocks and the tail, mapped from their files
    ref_last, ref_tokens, ref_logits = reference(model, ids, 12)
    assert child["tokens"] == ref_tokens
    for got, want in zip(child["logits"], [ref_last, *ref_logits], strict=True):
        assert np.abs(np.array(got, np.float32) - want).max() <= 1e-4


def test_blocks_survive_a_redis_restart_with_aof_and_recompute_without(model, tmp_path) -> None:
    from tests.conftest import PrivateRedis

    ids = history(2 * BS + 3)
    for persist, expected in ((("--appendonly", "yes", "--appendfsync", "always"), len(ids)), ((), 0)):
        server = PrivateRedis(tmp_path / f"redis-{bool(persist)}", *persist).start()
        try:
            save_history(model, store_with([RedisTier(server.client())]), ids)
            server.stop()
            server.start()
            res, last, tokens, logits = resume_and_continue(
                model, store_with([RedisTier(server.client())]), ids
            )
            assert res.cached_tokens == expected
            assert_exact(model, ids, last, tokens, logits)
        finally:
            server.stop()


@pytest.mark.parametrize("damage", ["flip_payload_byte", "flip_header_byte", "truncate", "empty"])
def test_corrupted_block_is_dropped_and_recomputed(model, workbench_env, damage, caplog) -> None:
    tier = disk(workbench_env)
    store = store_with([tier])
    ids = history(4 * BS)
    save_history(model, store, ids)
    victim = store.session_keys(space_of(model), ids)[2]  # the third block
    path = tier._path(victim)
    data = bytearray(path.read_bytes())
    if damage == "flip_payload_byte":
        data[len(data) // 2] ^= 0x40
    elif damage == "flip_header_byte":
        data[12] ^= 0x01  # inside the token count
    elif damage == "truncate":
        data = data[: HEADER_LEN + 100]
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="kvstore.store"):
        res, last, tokens, logits = resume_and_continue(model, store_with([tier]), ids)
    assert res.cached_tokens == 2 * BS and res.dropped == 1
    assert not path.exists() and not tier.contains([victim])[0]
    assert any("dropped" in r.getMessage() and "recomputed" in r.getMessage() for r in caplog.records)
    assert_exact(model, ids, last, tokens, logits)


def test_fork_shares_blocks_and_writes_them_once(model, workbench_env) -> None:
    tier = disk(workbench_env)
    store = store_with([tier])
    shared = history(3 * BS)
    a, b = shared + history(BS + 10, seed=1), shared + history(BS + 4, seed=2)
    save_history(model, store, a)
    written = store.counters["written_bytes_disk"]
    save_history(model, store, b)
    one_block = tier.stats()["bytes"] // tier.stats()["blocks"]
    # b added only its own block and tail: the three shared blocks were not written again.
    assert store.counters["written_blocks_disk"] == (4 + 1) + (1 + 1)
    assert store.counters["written_bytes_disk"] - written < 3 * one_block
    for ids in (a, b):
        cache = model.make_cache()
        assert store.restore(space_of(model), cache, ids).cached_tokens == len(ids)


def test_a_different_model_with_the_same_shapes_gets_no_hits(model, workbench_env) -> None:
    other = tiny_model(seed=1)
    # Same config and safetensors headers (the fingerprint may match); the weights' bytes differ.
    assert space_of(other).identity != space_of(model).identity
    tier = disk(workbench_env)
    ids = history(3 * BS)
    save_history(model, store_with([tier]), ids)
    cache = other.make_cache()
    res = store_with([tier]).restore(space_of(other), cache, ids)
    assert res.cached_tokens == 0 and cache.offset == 0
    # Even a block copied under the other model's key is refused by its header.
    store = store_with([tier])
    mine, theirs = store.session_keys(space_of(model), ids)[0], store.session_keys(space_of(other), ids)[0]
    tier.put(theirs, tier.get(mine))
    assert store.restore(space_of(other), other.make_cache(), ids).cached_tokens == 0


def test_block_read_from_a_slow_tier_is_promoted_to_faster_ones(model, workbench_env, redis_client) -> None:
    ids = history(2 * BS)
    save_history(model, store_with([RedisTier(redis_client)]), ids)
    memory, tier = MemoryTier(), disk(workbench_env)
    store = store_with([memory, tier, RedisTier(redis_client)])
    assert store.restore(space_of(model), model.make_cache(), ids).by_tier == {"redis": len(ids)}
    store.flush()
    assert memory.stats()["blocks"] == 3 and tier.stats()["blocks"] == 3
    assert store.restore(space_of(model), model.make_cache(), ids).by_tier == {"memory": len(ids)}


def test_disk_budget_is_enforced_least_recently_used_first(model, workbench_env) -> None:
    probe = disk(workbench_env / "probe")
    save_history(model, store_with([probe]), history(BS), with_logits=False)
    block_bytes = probe.stats()["bytes"]
    tier = disk(workbench_env, budget=int(2.5 * block_bytes))
    store = store_with([tier])
    first, second, third = history(BS, seed=11), history(BS, seed=12), history(BS, seed=13)
    save_history(model, store, first, with_logits=False)
    save_history(model, store, second, with_logits=False)
    space = space_of(model)
    assert store.restore(space, model.make_cache(), first).cached_tokens == BS  # first is now recent
    save_history(model, store, third, with_logits=False)
    assert tier.stats()["bytes"] <= tier.budget_bytes and tier.stats()["blocks"] == 2
    on_disk = sum(p.stat().st_size for p in (workbench_env / "kv" / "blocks").rglob("*.blk"))
    assert on_disk <= tier.budget_bytes
    hits = [store.restore(space, model.make_cache(), ids).cached_tokens for ids in (first, second, third)]
    assert hits == [BS, 0, BS]


def test_disk_index_survives_restarts_and_is_rebuilt_if_lost(model, workbench_env) -> None:
    ids = history(3 * BS)
    tier = disk(workbench_env)
    save_history(model, store_with([tier]), ids)
    stats = tier.stats()
    tier.close()
    assert disk(workbench_env).stats() == stats  # reopened: same index
    for suffix in ("", "-wal", "-shm"):
        Path(f"{tier.index_path}{suffix}").unlink(missing_ok=True)
    assert disk(workbench_env).stats() == stats  # lost: rebuilt from the files
    tier.index_path.write_bytes(b"this is not a sqlite database" * 100)
    reopened = disk(workbench_env)
    assert reopened.stats() == stats  # unreadable: rebuilt too
    assert store_with([reopened]).restore(space_of(model), model.make_cache(), ids).cached_tokens == len(ids)


def test_a_crash_mid_write_leaves_no_visible_block(model, workbench_env) -> None:
    tier = disk(workbench_env)
    leftover = tier._tmp_dir / "deadbeef.123.456.tmp"
    leftover.write_bytes(b"half a block")
    os.utime(leftover, (0, 0))  # long ago: a writer that crashed
    assert tier.stats()["blocks"] == 0
    assert not disk(workbench_env)._tmp_dir.joinpath(leftover.name).exists()


def test_gc_releases_only_what_no_other_session_shares(model, workbench_env) -> None:
    tier = disk(workbench_env)
    store = store_with([tier], refs=FileRefs(workbench_env / "kv" / "refs"))
    shared = history(2 * BS)
    a, b = shared + history(BS, seed=3), shared + history(BS + 4, seed=4)
    orphan = history(BS, seed=5)
    for ids in (a, b, orphan):
        save_history(model, store, ids)
    store.pin("A", space_of(model), a)
    store.pin("B", space_of(model), b)
    assert store.unpin("A")
    removed = store.gc(grace_s=0)
    # a's own block and tail record and the unpinned orphan's block and tail go; the shared ones stay.
    assert removed == {"disk": 4}
    assert store.restore(space_of(model), model.make_cache(), b).cached_tokens == len(b)
    assert store.restore(space_of(model), model.make_cache(), a).cached_tokens == 2 * BS
    assert store.restore(space_of(model), model.make_cache(), orphan).cached_tokens == 0
    assert store.gc(grace_s=3600) == {"disk": 0}


def test_hit_counters_are_shared_in_redis_and_cli_reports_them(
    model, workbench_env, redis_client, capsys
) -> None:
    from workbench.cli import main

    store = open_block_store(redis_client, block_size=BS)
    ids = history(2 * BS)
    save_history(model, store, ids)
    other_process = open_block_store(redis_client, block_size=BS)
    other_process.restore(space_of(model), model.make_cache(), [*ids, 1, 2, 3])
    counters = RedisStats(redis_client).read()
    assert counters["hit_tokens"] == 2 * BS and counters["lookup_tokens"] == 2 * BS + 3
    assert main(["cache", "stats", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["tiers"]["disk"]["blocks"] == 3 and stats["tiers"]["redis"]["blocks"] == 3
    assert stats["hit_rate"] == pytest.approx(2 * BS / (2 * BS + 3))
    assert main(["cache", "gc", "--grace", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == {"disk": 3, "redis": 3}
    save_history(model, store, ids)
    assert main(["cache", "clear", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == {"disk": 3, "redis": 3}
    assert list(redis_client.scan_iter(match=b"wb:kv*")) == []


def test_redis_blocks_carry_a_ttl(model, redis_client) -> None:
    save_history(model, store_with([RedisTier(redis_client, ttl_s=600)]), history(BS))
    names = list(redis_client.scan_iter(match=b"wb:kv:*"))  # every node (KEYS asks one)
    assert len(names) == 2  # the block and the tail record holding the last logits
    assert all(0 < redis_client.ttl(name) <= 600 for name in names)


def test_keys_are_stable_across_processes(model) -> None:
    from kvstore.keys import chain_keys

    keys = chain_keys(model.fingerprint, "float32", history(2 * BS), BS)
    code = (
        "import json, sys; from kvstore.keys import chain_keys; from tests.kv_helpers import history; "
        f"print(json.dumps(chain_keys({model.fingerprint!r}, 'float32', history({2 * BS}), {BS})))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == keys


def test_unreachable_redis_tier_is_skipped_not_fatal(model, workbench_env) -> None:
    no_retry = Retry(NoBackoff(), 0)
    dead = RedisTier(redis.Redis(unix_socket_path=str(workbench_env / "nowhere.sock"), retry=no_retry))
    ids = history(2 * BS)
    store = store_with([disk(workbench_env), dead])
    save_history(model, store, ids)
    res, last, tokens, logits = resume_and_continue(model, store, ids)
    assert res.by_tier == {"disk": len(ids)}
    assert_exact(model, ids, last, tokens, logits)
    with pytest.raises(ConnectionError, match="skipped after a recent connection failure"):
        dead.get("00" * 32)  # benched: no new connection attempt per call


@pytest.mark.parametrize("cached", ["whole_prompt", "prefix"])
def test_engine_generate_continues_a_restored_cache_exactly(model, cached) -> None:
    import engine

    prompt = history(3 * BS + 5, seed=21)
    params = engine.SamplingParams(temperature=0.0, max_tokens=10)
    scratch = next(
        e for e in engine.generate(model, prompt, params) if isinstance(e, engine.GenerationResult)
    )
    store = store_with([MemoryTier()])
    save_history(model, store, prompt if cached == "whole_prompt" else prompt[: 2 * BS + 3])
    cache = model.make_cache()
    res = store.restore(space_of(model), cache, prompt)
    events = engine.generate(model, prompt, params, cache=cache, last_logits=res.last_logits)
    resumed = next(e for e in events if isinstance(e, engine.GenerationResult))
    assert resumed.token_ids == scratch.token_ids
    assert resumed.prefilled_tokens == (0 if cached == "whole_prompt" else len(prompt) - 2 * BS)
