"""Full-text search over sessions: code-aware terms, BM25 ranking, incremental upkeep, speed at scale."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
import redis

from sessions import ids, search
from sessions.log import encode, header_record, message_record
from sessions.model import Message, Session
from sessions.search import terms
from sessions.store import SessionStore

# Each test here runs on one Redis and on a 3-master Redis Cluster (tests/conftest.py).
pytestmark = pytest.mark.redis_cluster


def new_session(title: str, repo: str = "/repo") -> Session:
    now = time.time()
    return Session(id=ids.new_id(), title=title, created=now, updated=now, repo=repo, model="m")


def add(store: SessionStore, title: str, *messages: str, repo: str = "/repo") -> Session:
    s = new_session(title, repo)
    store.create(s)
    for i, text in enumerate(messages):
        store.append_message(s, Message(role="user" if i % 2 == 0 else "assistant", content=text))
    return s


def test_terms_split_code_identifiers_and_keep_them_whole() -> None:
    assert terms("parse_config_file") == ["parse_config_file", "parse", "config", "file"]
    assert terms("HTTPServerError") == ["httpservererror", "http", "server", "error"]
    assert terms("call os.path.join(a, b)") == ["call", "os", "path", "join"]
    assert terms("Über naïve") == ["über", "naïve"]
    assert terms("x = 42") == ["42"]
    assert terms("parseHTTPResponse2") == ["parsehttpresponse2", "parse", "http", "response"]


def test_ranking_by_bm25_over_titles_and_every_message(redis_client: redis.Redis) -> None:
    store = SessionStore(redis_client)
    once = add(store, "misc", "hello", "the tokenizer is slow", "ok")
    twice = add(store, "misc", "the tokenizer again", "tokenizer fixed", "thanks")
    titled = add(store, "tokenizer rewrite", "start", "done")
    late = add(store, "misc", "a", "b", "c", "d", "e", "only here: tokenizer")
    add(store, "unrelated", "nothing to see", "at all")
    ranked = [h.session.id for h in store.search("tokenizer")]
    assert ranked[0] == titled.id and ranked[1] == twice.id  # title weight, then frequency
    assert set(ranked) == {once.id, twice.id, titled.id, late.id}  # found in any message, not the first
    hit = next(h for h in store.search("tokenizer") if h.session.id == late.id)
    assert hit.message_number == 6 and "only here: tokenizer" in hit.snippet


def test_identifier_queries_match_their_parts(redis_client: redis.Redis) -> None:
    store = SessionStore(redis_client)
    snake = add(store, "a", "why does load_model_config raise?")
    add(store, "b", "the model is fine")
    hits = store.search("loadModelConfig")
    assert hits[0].session.id == snake.id and set(hits[0].matched) >= {"load", "config"}
    assert store.search("load_model_config")[0].session.id == snake.id


def test_rename_delete_and_repo_filter_keep_the_index_exact(redis_client: redis.Redis) -> None:
    store = SessionStore(redis_client)
    s = add(store, "flaky websocket test", "see the retry loop", repo="/r1")
    other = add(store, "websocket docs", "write docs", repo="/r2")
    store.update_meta(s, title="retry backoff")
    assert [h.session.id for h in store.search("flaky")] == []
    assert [h.session.id for h in store.search("backoff")] == [s.id]
    assert [h.session.id for h in store.search("websocket")] == [other.id]
    assert [h.session.id for h in store.search("retry", repo="/r2")] == []
    store.delete(s.id)
    assert store.search("retry") == [] and redis_client.smembers(search.doc_key(s.id)) == set()


def test_search_is_fast_at_thousands_of_sessions(redis_client: redis.Redis) -> None:
    n_sessions, rng = 2000, random.Random(5)
    vocab = [f"w{i}" for i in range(3000)] + ["parser", "tokenizer", "segfault", "retry", "cache"]
    weights = [1 / (i + 1) for i in range(len(vocab))]  # Zipf-like: a few very common words
    root = Path(SessionStore(redis_client).root)
    needle = None
    for i in range(n_sessions):
        s = new_session(" ".join(rng.choices(vocab, weights, k=5)))
        messages = [
            Message(role="user", content=" ".join(rng.choices(vocab, weights, k=40))) for _ in range(6)
        ]
        if i == 1234:
            needle, messages[3].content = s, messages[3].content + " zeppelin_manifest_error"
        records = [header_record(s)] + [message_record(n, m) for n, m in enumerate(messages)]
        (root / f"{s.id}.jsonl").write_bytes(b"".join(encode(r) for r in records))

    t0 = time.perf_counter()
    store = SessionStore(redis_client)  # rebuilds the Redis side (and the index) from disk, in pipelines
    rebuild_s = time.perf_counter() - t0
    assert len(store.list()) == n_sessions

    queries = ["zeppelin manifest", "w1 parser", "tokenizer segfault retry", "w0", "cache w17 w250"]
    t0 = time.perf_counter()
    for q in queries:
        store.search(q, limit=20)
    per_query = (time.perf_counter() - t0) / len(queries)
    assert store.search("zeppelin")[0].session.id == needle.id
    assert store.search("manifest_error")[0].session.id == needle.id
    print(f"rebuild {n_sessions} sessions: {rebuild_s:.2f} s; search: {per_query * 1000:.1f} ms/query")
    assert per_query < 0.25, f"search took {per_query * 1000:.0f} ms per query at {n_sessions} sessions"
