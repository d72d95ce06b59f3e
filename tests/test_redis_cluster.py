"""Redis Cluster: REDIS_URL naming a cluster, keys that keep each multi-key write in one slot, KV blocks
spread over the nodes, and a master restart that loses no session (disk is the source of truth) and
leaves its blocks as misses. The session, KV and index tests also run on the cluster
(`pytest.mark.redis_cluster` in their modules); these are the cluster's own properties."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.cluster import RedisCluster

from core import keys, redis_server
from core.errors import RedisUnavailable
from core.lease import lease_key
from indexer.index import Index, shared_encoder
from kvstore.space import space_of
from kvstore.tiers.redis import BLOCK_PREFIX, RedisTier
from serve import protocol
from serve.client import start_remote_turn
from serve.worker import Worker
from sessions import SessionService, TurnOptions
from sessions.events import Result
from sessions.model import Message
from sessions.store import SessionStore, log_key, session_key
from tests.cluster_support import HOST, PrivateCluster
from tests.indexer_support import write_repo
from tests.kv_helpers import BS, history, save_history, store_with, tiny_model
from tests.test_kvstore_blocks import assert_exact, resume_and_continue

GREEDY = dict(temperature=0.0, max_tokens=6, rag=False)


@pytest.fixture
def cluster(redis_cluster: PrivateCluster, monkeypatch: pytest.MonkeyPatch) -> RedisCluster:
    """REDIS_URL -> the private cluster, emptied; what connect() returns for it."""
    monkeypatch.setenv("REDIS_URL", redis_cluster.url)
    redis_server.reset_clients()
    client = redis_server.connect()
    client.flushall()
    return client


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.fixtures.tiny_models import _SMALL, Spec, build_spec

    spec = Spec("qwen3", "qwen3", "v5", tied=True, sizes={**_SMALL, "max_position_embeddings": 2048})
    return build_spec("qwen3_cluster", spec, tmp_path_factory.mktemp("models"), seed=5).path


def slots(client: RedisCluster, names: list[str] | list[bytes]) -> set[int]:
    return {int(client.cluster_keyslot(name)) for name in names}


def test_redis_url_names_a_cluster_by_scheme_or_by_what_the_node_says(
    redis_cluster: PrivateCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    for url in (redis_cluster.url, f"redis://{HOST}:{redis_cluster.nodes[1].port}"):
        monkeypatch.setenv("REDIS_URL", url)
        redis_server.reset_clients()
        client = redis_server.connect()
        assert isinstance(client, RedisCluster), url
        assert len(client.get_primaries()) == 3
        assert redis_server.server_info().version.startswith("8.")


def test_a_cluster_url_that_cannot_work_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis+cluster://127.0.0.1:1")
    redis_server.reset_clients()
    with pytest.raises(
        RedisUnavailable, match=r"cannot reach the Redis Cluster at redis\+cluster://127\.0\.0\.1:1"
    ):
        redis_server.connect()


def test_a_sessions_keys_share_one_slot_with_the_catalogue(cluster: RedisCluster, model_dir: Path) -> None:
    with SessionService(cluster) as svc:
        turn = svc.start_turn(None, "Where is the parser?", TurnOptions(**GREEDY, model=str(model_dir)))
        result = next(e for e in turn if isinstance(e, Result))
        assert not result.is_error, result.text
        sid = result.session_id
        names = list(cluster.scan_iter(match=keys.SESSIONS + "*"))
    assert {session_key(sid).encode(), log_key(sid).encode()} <= set(names)
    # Every session key (hash, log, listing, prefix ids, full-text postings) and the lease: one slot.
    assert len(names) > 10 and slots(cluster, [*names, lease_key(sid)]) == {
        int(cluster.cluster_keyslot(session_key(sid)))
    }


def test_an_index_keeps_its_keys_in_one_slot_and_indexes_in_different_ones(
    cluster: RedisCluster, tmp_path: Path
) -> None:
    ids = []
    for name in ("a", "b", "c", "d"):
        repo = tmp_path / name
        write_repo(repo, {"m.py": f"def {name}_parse(text):\n    return text.split()\n"})
        ix = Index.open(repo, cluster, encoder=shared_encoder())
        ix.update()
        names = list(cluster.scan_iter(match=ix.store.prefix + "*"))
        assert len(names) > 4 and len(slots(cluster, names)) == 1
        assert ix.search(f"{name} parse", k=1)[0].path == "m.py"
        ids.append(ix.store.prefix)
    assert len(slots(cluster, ids)) > 1


def test_kv_blocks_spread_over_the_masters(cluster: RedisCluster, redis_cluster: PrivateCluster) -> None:
    model = tiny_model()
    save_history(model, store_with([RedisTier(cluster)]), history(12 * BS))
    names = list(cluster.scan_iter(match=BLOCK_PREFIX + b"*"))
    assert len(names) == 13  # 12 blocks and the tail record
    assert {redis_cluster.node_of(name) for name in names} == {0, 1, 2}


def test_a_master_restart_loses_no_session_and_its_blocks_are_misses(
    cluster: RedisCluster, redis_cluster: PrivateCluster, model_dir: Path
) -> None:
    store = SessionStore(cluster)
    with SessionService(cluster) as svc:
        turn = svc.start_turn(None, "Explain the tokenizer", TurnOptions(**GREEDY, model=str(model_dir)))
        sid = next(e for e in turn if isinstance(e, Result)).session_id
    store.append_message(store.load(sid), Message(role="user", content="a note about retries"))
    model = tiny_model()
    ids = history(12 * BS)
    save_history(model, store_with([RedisTier(cluster)]), ids)
    block_names = store_with([RedisTier(cluster)]).session_keys(space_of(model), ids)
    sessions_node = redis_cluster.node_of(session_key(sid))

    redis_cluster.restart(sessions_node)  # no persistence: the node comes back empty, owning its slots

    assert not cluster.exists(session_key(sid))
    rebuilt = SessionStore(cluster)  # the next process start rebuilds the Redis side from the disk logs
    assert [m.content for m in rebuilt.load(sid).messages][-1] == "a note about retries"
    assert [s.id for s in rebuilt.list()] == [sid] and rebuilt.search("retries")[0].session.id == sid
    with SessionService(cluster) as svc:  # and the session resumes
        turn = svc.start_turn(sid, "And the tests?", TurnOptions(**GREEDY))
        result = next(e for e in turn if isinstance(e, Result))
        assert not result.is_error and svc.show(sid).message_count == 5

    # The blocks on the restarted node are misses; the restore stops at the first, and recomputes the rest.
    held = RedisTier(cluster).contains(block_names)
    lost = [i for i, name in enumerate(block_names) if redis_cluster.node_of(BLOCK_PREFIX + name.encode())
            == sessions_node]  # fmt: skip
    assert lost and [i for i, ok in enumerate(held) if not ok] == lost
    res, last, tokens, logits = resume_and_continue(model, store_with([RedisTier(cluster)]), ids)
    assert res.cached_tokens == lost[0] * BS
    assert_exact(model, ids, last, tokens, logits)


def test_the_serve_protocol_runs_on_the_cluster(cluster: RedisCluster, model_dir: Path) -> None:
    """The bounded submit script, the worker's end-of-request MULTI and the cancel key: all in `{wbq}`."""
    with SessionService(cluster) as svc:
        worker = Worker(cluster, svc, name="cluster-worker", block_ms=100)
        ask = {**GREEDY, "model": str(model_dir)}
        turn = start_remote_turn(cluster, "Where is the parser?", None, ask)
        assert worker.step()
        result = [e.to_dict() for e in turn][-1]
        assert result["type"] == "result" and not result["is_error"], result
        cancelled = start_remote_turn(cluster, "never run", None, ask)
        protocol.request_cancel(cluster, cancelled.request.id)
        assert worker.step() and [e.to_dict() for e in cancelled][-1]["finish_reason"] == "cancelled"
    assert cluster.xlen(protocol.REQUESTS) == 0 and cluster.exists(protocol.done_key(turn.request.id))
