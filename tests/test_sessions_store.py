"""Session storage: JSONL on disk (the truth) mirrored in Redis; ids and prefixes; crash shapes."""

from __future__ import annotations

import json
import logging
import time

import pytest
import redis

from core.errors import NotFound, UsageError
from sessions import ids
from sessions.log import SessionFile
from sessions.model import Message, Session, Settings
from sessions.store import SessionStore, log_key, session_key

# Each test here runs on one Redis and on a 3-master Redis Cluster (tests/conftest.py).
pytestmark = pytest.mark.redis_cluster


def make_session(repo: str = "/repo/a", title: str = "fix the parser", when: float | None = None) -> Session:
    now = time.time() if when is None else when
    return Session(id=ids.new_id(), title=title, created=now, updated=now, repo=repo, model="tiny-qwen3")


def test_ids_are_unique_sortable_and_short() -> None:
    made = [ids.new_id() for _ in range(2000)]
    assert len(set(made)) == len(made)
    assert made == sorted(made)
    assert all(len(i) == ids.ID_LENGTH == 16 and ids.is_valid(i) for i in made)
    assert abs(ids.id_time(made[0]) - time.time()) < 5


def test_prefix_resolution_and_ambiguity_lists_candidates() -> None:
    pool = ["0aaaaaaaaaaaaaaa", "0aaaaaaaaaaaaaab", "0bbbbbbbbbbbbbbb"]
    assert ids.resolve_prefix("0b", pool) == "0bbbbbbbbbbbbbbb"
    assert ids.resolve_prefix("0AAAAAAAAAAAAAAB", pool) == "0aaaaaaaaaaaaaab"
    with pytest.raises(ids.AmbiguousId) as err:
        ids.resolve_prefix("0a", pool, describe=lambda i: f"title of {i[-1]}")
    message = str(err.value)
    assert "0aaaaaaaaaaaaaaa  title of a" in message and "0aaaaaaaaaaaaaab  title of b" in message
    assert err.value.exit_code == 2
    with pytest.raises(NotFound, match="'0c'"):
        ids.resolve_prefix("0c", pool)
    with pytest.raises(UsageError, match="not a session id"):
        ids.resolve_prefix("zz-!", pool)


def test_round_trip_through_redis_and_disk(redis_client: redis.Redis) -> None:
    store = SessionStore(redis_client)
    s = make_session()
    s.settings = Settings(rag=False, system_prompt="be brief", thinking=True)
    store.create(s)
    store.append_message(s, Message(role="user", content="why does parse_config fail?"))
    reply = Message(
        role="assistant", content="It reads `None`.", timings={"ttft_s": 0.1}, cache={"cached": 64}
    )
    store.append_message(s, reply, history=[1, 2, 3, 4], fingerprint="fp", dtype="float32")
    store.update_meta(s, title="parser bug")

    from_redis = store.load(s.id)
    from_disk = SessionFile(store.root / f"{s.id}.jsonl").load()
    for loaded in (from_redis, from_disk):
        assert loaded is not None
        assert loaded.title == "parser bug"
        assert loaded.settings == s.settings
        assert [m.content for m in loaded.messages] == ["why does parse_config fail?", "It reads `None`."]
        assert loaded.messages[1].timings == {"ttft_s": 0.1} and loaded.messages[1].cache == {"cached": 64}
        assert loaded.history == [1, 2, 3, 4] and loaded.history_fingerprint == "fp"
    listed = store.list()
    assert [i.id for i in listed] == [s.id] and listed[0].title == "parser bug"
    assert listed[0].message_count == 2


def test_list_newest_first_filtered_by_repo_and_latest(redis_client: redis.Redis) -> None:
    store = SessionStore(redis_client)
    a = make_session("/r/one", when=1000.0)
    b = make_session("/r/two", when=2000.0)
    c = make_session("/r/one", when=3000.0)
    for s in (a, b, c):
        store.create(s)
    assert [i.id for i in store.list()] == [c.id, b.id, a.id]
    assert [i.id for i in store.list(repo="/r/one")] == [c.id, a.id]
    store.append_message(a, Message(role="user", content="later", created=4000.0))
    assert store.latest("/r/one").id == a.id
    assert store.latest("/r/none") is None


def test_rebuild_from_disk_after_flushall(redis_client: redis.Redis) -> None:
    store = SessionStore(redis_client)
    words = ["alpha", "bravo", "charlie", "delta", "echo"]
    sessions = [make_session(title=f"session {n}") for n in range(5)]
    for s, word in zip(sessions, words, strict=True):
        store.create(s)
        store.append_message(s, Message(role="user", content=f"a question about the {word} widget"))
    redis_client.flushall()
    assert store.list() == []
    rebuilt = SessionStore(redis_client)  # a new process start
    assert sorted(i.id for i in rebuilt.list()) == sorted(s.id for s in sessions)
    assert rebuilt.load(sessions[2].id).messages[0].content == "a question about the charlie widget"
    hits = rebuilt.search("charlie widget")  # every session has "widget"; only one "charlie"
    assert hits[0].session.id == sessions[2].id and len(hits) == 5 and hits[0].score > hits[1].score
    assert SessionStore(redis_client).sync_from_disk() == []  # nothing stale the second time


def test_redis_lagging_behind_disk_is_rebuilt(redis_client: redis.Redis) -> None:
    store = SessionStore(redis_client)
    s = make_session()
    store.create(s)
    size_before = redis_client.hget(session_key(s.id), "log_size")
    store.append_message(s, Message(role="user", content="kept"))
    # Redis lost its last transaction (AOF everysec and a crash): the log entry and the size with it.
    redis_client.rpop(log_key(s.id))
    redis_client.hset(session_key(s.id), "log_size", size_before)
    assert SessionStore(redis_client, sync=False).sync_from_disk() == [s.id]
    assert [m.content for m in store.load(s.id).messages] == ["kept"]


def test_corrupt_jsonl_line_is_skipped_with_a_warning(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    store = SessionStore(redis_client)
    s = make_session()
    store.create(s)
    for text in ("one", "two", "three"):
        store.append_message(s, Message(role="user", content=text))
    path = store.root / f"{s.id}.jsonl"
    lines = path.read_bytes().splitlines()
    lines[2] = b'{"t":"message","n":1,"mess\xff'  # a torn, non-UTF-8 line
    path.write_bytes(b"\n".join(lines) + b"\n")
    redis_client.flushall()
    with caplog.at_level(logging.WARNING, logger="workbench.sessions"):
        store = SessionStore(redis_client)
    assert [m.content for m in store.load(s.id).messages] == ["one", "three"]
    assert f"{path} line 3: skipped a corrupt line" in caplog.text


def test_torn_last_line_does_not_swallow_the_next_record(redis_client: redis.Redis) -> None:
    store = SessionStore(redis_client)
    s = make_session()
    store.create(s)
    path = store.root / f"{s.id}.jsonl"
    with open(path, "ab") as fh:
        fh.write(b'{"t":"message","n":0,"message":{"role":"us')  # crash mid-write
    store.append_message(s, Message(role="user", content="after the crash"))
    loaded = SessionFile(path).load()
    assert [m.content for m in loaded.messages] == ["after the crash"]


def test_partial_reply_without_completion_replays_as_interrupted(redis_client: redis.Redis) -> None:
    store = SessionStore(redis_client)
    s = make_session()
    store.create(s)
    store.append_message(s, Message(role="user", content="explain"))
    store.append_partial(s, 1, "The answer ", "", time.time())
    store.append_partial(s, 1, "is 42", "", time.time())
    for loaded in (store.load(s.id), SessionFile(store.root / f"{s.id}.jsonl").load()):
        assert [(m.role, m.content, m.status) for m in loaded.messages] == [
            ("user", "explain", "complete"),
            ("assistant", "The answer is 42", "interrupted"),
        ]
    # The next turn appends after the interrupted reply; the replay keeps that order.
    resumed = store.load(s.id)
    store.append_message(resumed, Message(role="user", content="go on"))
    assert [m.content for m in store.load(s.id).messages] == ["explain", "The answer is 42", "go on"]
    # A reply that completes replaces its partial records.
    store.append_partial(resumed, 3, "partial", "", time.time())
    store.append_message(resumed, Message(role="assistant", content="complete answer"))
    assert [m.status for m in store.load(s.id).messages] == [
        "complete",
        "interrupted",
        "complete",
        "complete",
    ]
    assert store.load(s.id).messages[3].content == "complete answer"


def test_fork_point_replay_and_delete(redis_client: redis.Redis) -> None:
    store = SessionStore(redis_client)
    s = make_session()
    store.create(s)
    store.append_message(s, Message(role="user", content="q1"))
    store.append_message(s, Message(role="assistant", content="a1"), history=[1, 2, 3], fingerprint="f")
    store.append_message(s, Message(role="user", content="q2"))
    store.append_message(s, Message(role="assistant", content="a2"), history=[1, 2, 3, 9, 9], fingerprint="f")
    at_two = store.load(s.id, stop_after=2)
    assert [m.content for m in at_two.messages] == ["q1", "a1"] and at_two.history == [1, 2, 3]
    store.delete(s.id)
    assert store.list() == [] and not (store.root / f"{s.id}.jsonl").exists()
    assert store.search("q1") == []
    with pytest.raises(NotFound):
        store.load(s.id)


def test_store_resolve_uses_redis_ids(redis_client: redis.Redis) -> None:
    store = SessionStore(redis_client)
    a, b = make_session(title="first"), make_session(title="second")
    store.create(a)
    store.create(b)
    common = next(n for n in range(16) if a.id[n] != b.id[n])
    assert store.resolve(a.id[: common + 1]) == a.id
    with pytest.raises(ids.AmbiguousId, match="second"):
        store.resolve(a.id[:common])
    json.dumps([h.to_dict() for h in store.search("first")])


def test_a_replayed_interrupted_reply_is_sealed_and_searchable(redis_client: redis.Redis) -> None:
    store = SessionStore(redis_client)
    s = make_session()
    store.create(s)
    store.append_message(s, Message(role="user", content="explain"))
    store.append_partial(s, 1, "the zeppelin answer", "", time.time())  # then the writer died
    assert store.search("zeppelin") == []  # partial text is not indexed while it streams
    resumed = store.load(s.id)
    assert resumed.open_reply == 1
    store.seal_open_reply(resumed)
    assert resumed.open_reply is None and store.load(s.id).open_reply is None
    assert [h.session.id for h in store.search("zeppelin")] == [s.id]
    assert [m.status for m in SessionFile(store.root / f"{s.id}.jsonl").load().messages] == [
        "complete",
        "interrupted",
    ]


def test_flushall_under_a_running_writer_loses_nothing(redis_client: redis.Redis) -> None:
    store = SessionStore(redis_client)
    s = make_session()
    store.create(s)
    store.append_message(s, Message(role="user", content="before"))
    redis_client.flushall()
    store.append_message(s, Message(role="assistant", content="after"))  # this process carries on
    assert [m.content for m in store.load(s.id).messages] == ["before", "after"]  # from disk
    assert store.list() == []  # the remains of a hash are not listed as a session
    restarted = SessionStore(redis_client)
    assert [(i.id, i.message_count) for i in restarted.list()] == [(s.id, 2)]
