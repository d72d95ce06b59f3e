"""The session service end to end on a real tiny model, a real Redis and the disk log."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from sessions import SessionBusy, SessionService, TurnOptions
from sessions.events import (
    CacheStats,
    Delta,
    IndexProgress,
    ModelLoading,
    Prefill,
    Queued,
    Result,
    Retrieval,
    SessionStarted,
)
from sessions.log import SessionFile

# Each test here runs on one Redis and on a 3-master Redis Cluster (tests/conftest.py).
pytestmark = pytest.mark.redis_cluster

ROOT = Path(__file__).resolve().parent.parent
# A system prompt long enough to fill several KV blocks of the default size with the tiny tokenizer.
SYSTEM = "You are a careful coding assistant. Answer briefly and cite files. " * 8
GREEDY = dict(temperature=0.0, max_tokens=12, rag=False, system_prompt=SYSTEM)
# what a turn reports while the user waits (issues 14, 15)
PROGRESS = (Queued, ModelLoading, IndexProgress, Prefill)


def main_events(events: list) -> list:
    """The events of the contract before issue 15 added progress events: session, retrieval, cache..."""
    return [e for e in events if not isinstance(e, PROGRESS)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen3 fixture (random weights, real tokenizer and chat template) with room for turns."""
    from tests.fixtures.tiny_models import _SMALL, Spec, build_spec

    spec = Spec("qwen3", "qwen3", "v5", tied=True, sizes={**_SMALL, "max_position_embeddings": 4096})
    return build_spec("qwen3_sessions", spec, tmp_path_factory.mktemp("models"), seed=77).path


@pytest.fixture
def svc(redis_client: redis.Redis) -> SessionService:
    service = SessionService(redis_client)
    yield service
    service.close()


def run(svc: SessionService, session_id: str | None, prompt: str, **options: object) -> tuple[list, Result]:
    turn = svc.start_turn(session_id, prompt, TurnOptions(**options))
    events = list(turn)
    assert isinstance(events[-1], Result)
    return events, events[-1]


def test_turn_streams_events_records_and_reuses_the_cache(svc: SessionService, model_dir: Path) -> None:
    events, first = run(
        svc, None, "Where is the parser?", model=str(model_dir), repo=str(model_dir), **GREEDY
    )
    main = main_events(events)
    assert [type(e) for e in main[:3]] == [SessionStarted, Retrieval, CacheStats]
    assert all(isinstance(e, Delta) for e in main[3:-1]) and not first.is_error
    assert "".join(e.text for e in events if isinstance(e, Delta)) == first.text
    assert first.tokens["cached"] == 0 and first.tokens["generated"] == 12 and first.finish_reason == "length"
    sid = first.session_id
    assert all(e.session_id == sid for e in main)
    json.dumps([e.to_dict() for e in events])  # every event is a stream-json line

    # Fork before the second turn: the same history, to be answered without any cache as the reference.
    reference_session = svc.fork(sid, title="reference")
    _, second = run(svc, sid, "And the tests?", max_tokens=12)
    _, recomputed = run(svc, reference_session.id, "And the tests?", max_tokens=12, no_cache=True)
    # Everything up to the first reply is reused (the template re-renders the reply itself differently).
    block = svc.blocks().block_size
    assert second.tokens["cached"] >= (first.tokens["prompt"] - 8) // block * block > 0
    assert sum(second.cache_by_tier.values()) == second.tokens["cached"]
    assert second.tokens["prefilled"] == second.tokens["prompt"] - second.tokens["cached"]
    assert recomputed.tokens["cached"] == 0 and recomputed.tokens["prefilled"] == recomputed.tokens["prompt"]
    assert second.text == recomputed.text and second.tokens["prompt"] == recomputed.tokens["prompt"]

    shown = svc.show(sid[:12])
    assert [m.role for m in shown.messages] == ["user", "assistant", "user", "assistant"]
    assert (
        shown.messages[3].cache["cached"] == second.tokens["cached"]
        and shown.messages[3].timings["ttft_s"] > 0
    )
    assert shown.title == "Where is the parser?" and shown.settings.system_prompt == SYSTEM
    on_disk = SessionFile(Path(os.environ["WORKBENCH_HOME"]) / "sessions" / f"{sid}.jsonl").load()
    assert [m.content for m in on_disk.messages] == [m.content for m in shown.messages]
    assert svc.latest(str(model_dir)).id in (sid, reference_session.id)
    markdown = svc.export(sid)
    assert "## 3. user" in markdown and "And the tests?" in markdown
    assert json.loads(svc.export(sid, "json"))["messages"][1]["content"] == first.text


def test_the_last_sessions_cache_stays_live_and_its_memory_serves_the_next_session(
    redis_client: redis.Redis, model_dir: Path
) -> None:
    """One cache outlives its turn: the last session's, for that session's next turn (sessions/warm.py).
    A turn of another session releases it, and the model's KV pool (engine/kvpool.py) hands the new
    cache the same memory, so a conversation does not fault in fresh pages every turn."""
    import engine

    loaded: list = []

    def load(name: str, backend: str | None) -> object:
        loaded.append(engine.load_model(name, backend=backend))
        return loaded[-1]

    service = SessionService(redis_client, load_model=load)
    try:
        options = dict(model=str(model_dir), repo=str(model_dir), **GREEDY)
        run(service, None, "Where is the parser?", **options)
        pool = loaded[0].kv_pool
        assert pool.in_use_bytes > 0  # kept live for the session's next turn
        allocated = pool.allocations
        run(service, None, "Where is the parser?", **options)  # a new session, the same prompt
        assert pool.allocations == allocated and len(loaded) == 1
    finally:
        service.close()


def test_fork_and_delete_keep_shared_blocks(svc: SessionService, model_dir: Path) -> None:
    _, first = run(svc, None, "Explain the loader.", model=str(model_dir), **GREEDY)
    sid = first.session_id
    run(svc, sid, "Now the cache.", max_tokens=12)
    first_history = svc.store.load(sid, stop_after=2).history
    # The parent's pin moved on to its second history; the fork at its first reply pins the first again.
    fork = svc.fork(sid, at=2)
    assert fork.history == first_history and fork.parent_id == sid and len(fork.messages) == 2
    svc.wait_background()  # the fork's pin is written off the caller's thread
    blocks = svc.blocks()
    blocks.flush()
    disk = next(t for t in blocks.tiers if t.name == "disk")
    before = disk.stats()["blocks"]

    svc.delete(sid)
    svc.wait_background()
    removed = blocks.gc(grace_s=0)
    assert removed["disk"] > 0 and disk.stats()["blocks"] < before  # the parent's own blocks went
    fork_keys = blocks.refs.keys_of(fork.id)
    assert fork_keys and all(disk.contains(fork_keys))  # every block the fork shares stayed

    _, resumed = run(svc, fork.id, "Now the cache.", max_tokens=12)
    assert resumed.tokens["cached"] > 0 and not resumed.is_error


def test_cancel_records_the_partial_reply_as_interrupted(svc: SessionService, model_dir: Path) -> None:
    options = TurnOptions(model=str(model_dir), **{**GREEDY, "max_tokens": 3000})
    turn = svc.start_turn(None, "Write a long essay.", options)
    for event in turn:
        if isinstance(event, Delta):
            turn.cancel()
    result = turn.result
    assert result.finish_reason == "cancelled" and result.exit_code == 130 and not result.is_error
    reply = svc.show(turn.session_id).messages[-1]
    assert reply.status == "interrupted" and reply.content == result.text and result.text


def test_async_events_for_the_tui(svc: SessionService, model_dir: Path) -> None:
    turn = svc.start_turn(None, "hello", TurnOptions(model=str(model_dir), **GREEDY))

    async def collect() -> list[str]:
        return [e.type async for e in turn.events_async()]

    types = asyncio.run(collect())
    main = [t for t in types if t not in ("queued", "model_loading", "prefill")]
    assert main[:3] == ["session", "retrieval", "cache"] and types[-1] == "result"
    assert types == [e.type for e in turn]  # a second reader replays the same events


def test_unknown_model_writes_nothing(svc: SessionService, redis_client: redis.Redis) -> None:
    turn = svc.start_turn(None, "hi", TurnOptions(model="/nonexistent/model-dir"))
    result = turn.wait(30)
    assert result.is_error and result.exit_code == 3 and "/nonexistent/model-dir" in result.error
    svc.close()
    assert list(redis_client.scan_iter(match="wb:{s}:*")) == []
    assert list((Path(os.environ["WORKBENCH_HOME"]) / "sessions").glob("*")) == []


def test_model_gone_then_continue_with_another_model(
    svc: SessionService, model_dir: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "moved-model"
    shutil.copytree(model_dir, copy)
    _, first = run(svc, None, "first", model=str(copy), **GREEDY)
    shutil.rmtree(copy)
    svc._engine._models.clear()  # a new process would not have it loaded either
    _, failed = run(svc, first.session_id, "second")
    assert failed.is_error and failed.exit_code == 3
    assert str(copy) in failed.error and "--model" in failed.error
    assert len(svc.show(first.session_id).messages) == 2  # nothing recorded
    other = tmp_path / "other-model"  # same shapes, another config: another fingerprint
    shutil.copytree(model_dir, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 2e-6}))
    events, moved = run(svc, first.session_id, "second", model=str(other))
    assert not moved.is_error and moved.model == str(other)
    assert main_events(events)[0].kv_reuse is False and moved.tokens["cached"] == 0
    resumed = svc.show(first.session_id)
    assert resumed.model == str(other) and [m.content for m in resumed.messages][2] == "second"


CHILD = """
import sys
from sessions import SessionService, TurnOptions
svc = SessionService(partial_interval_s=0.02)
turn = svc.start_turn(None, "Tell me everything.", TurnOptions(model=sys.argv[1], temperature=0.0,
                      max_tokens=3000, rag=False))
for event in turn:
    if event.type == "delta":
        print(turn.session_id, flush=True)
"""


def test_sigkill_mid_generation_leaves_a_readable_session(redis_client: redis.Redis, model_dir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(model_dir)], stdout=subprocess.PIPE, env=env)
    sid = child.stdout.readline().decode().strip()
    log_path = Path(os.environ["WORKBENCH_HOME"]) / "sessions" / f"{sid}.jsonl"
    deadline = time.monotonic() + 30
    # Kill once a partial record is wholly on disk (a torn last line is skipped, by design).
    while time.monotonic() < deadline:
        data = log_path.read_bytes() if log_path.exists() else b""
        if b'"t":"partial"' in data and data.endswith(b"\n"):
            break
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait(10)

    with SessionService(redis_client) as svc:
        session = svc.show(sid)
        assert [m.role for m in session.messages] == ["user", "assistant"]
        user, reply = session.messages
        assert user.content == "Tell me everything." and user.status == "complete"
        assert reply.status == "interrupted" and reply.content
        # The dead process's lease does not lock the session: a new turn continues it at once.
        _, result = run(svc, sid[:10], "Go on.", max_tokens=4)
        assert not result.is_error and result.message == 4
        statuses = [m.status for m in svc.show(sid).messages]
        assert statuses == ["complete", "interrupted", "complete", "complete"]
        # The interrupted reply was sealed as a message record of its own (and indexed for search).
        records = [json.loads(line) for line in log_path.read_text().splitlines()]
        sealed = [r for r in records if r["t"] == "message" and r["n"] == 1]
        assert sealed and sealed[0]["message"]["status"] == "interrupted"
        assert sealed[0]["message"]["content"] == reply.content


HOLDER = """
import sys
from sessions import SessionService

svc = SessionService()
svc.open(sys.argv[1])
print("open", flush=True)
sys.stdin.readline()
svc.close()
"""


def test_second_process_is_refused_while_the_first_holds_the_session(
    svc: SessionService, model_dir: Path
) -> None:
    session = svc.create(repo=str(model_dir), model=str(model_dir))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, session.id], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )
    try:
        assert holder.stdout.readline() == b"open\n"
        refused = svc.start_turn(session.id, "hello", TurnOptions(**GREEDY)).wait(30)
        assert refused.is_error and refused.exit_code == SessionBusy.exit_code
        assert session.id in refused.error and f"pid {holder.pid}" in refused.error
        with pytest.raises(SessionBusy):
            svc.delete(session.id)
    finally:
        holder.communicate(b"\n", timeout=30)
    _, result = run(svc, session.id, "hello", **GREEDY)  # released on close: now it is ours
    assert not result.is_error and svc.show(session.id).title == "hello"


def test_rag_splices_retrieved_code_and_keeps_it_in_the_history(
    svc: SessionService, model_dir: Path, tmp_path: Path
) -> None:
    from indexer import Index

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "parser.py").write_text(
        "def parse_config(path):\n    return dict(line.split('=') for line in open(path))\n"
    )
    (repo / "net.py").write_text("def open_socket(host, port):\n    return (host, port)\n")
    Index.open(repo).update()
    options = {**GREEDY, "rag": True, "max_tokens": 6}
    events, first = run(
        svc, None, "How does parse_config work?", model=str(model_dir), repo=str(repo), **options
    )
    retrieval = main_events(events)[1]
    assert isinstance(retrieval, Retrieval) and retrieval.skipped is None and retrieval.tokens > 0
    assert "parser.py" in [c.path for c in retrieval.chunks]
    assert [h["path"] for h in first.retrieved] == [c.path for c in retrieval.chunks]
    context = svc.show(first.session_id).messages[0].context
    assert any("def parse_config" in c["text"] for c in context)
    # The next turn re-renders that context from the history: the prefix holding it comes from cache.
    _, second = run(svc, first.session_id, "Thanks.", max_tokens=6, rag=False)
    assert second.tokens["cached"] >= retrieval.tokens and not second.is_error


def test_unindexed_repo_turn_says_why_retrieval_was_skipped(
    svc: SessionService, model_dir: Path, tmp_path: Path
) -> None:
    events, result = run(svc, None, "hi", model=str(model_dir), repo=str(tmp_path), **{**GREEDY, "rag": True})
    assert "not indexed" in main_events(events)[1].skipped and not result.is_error and result.retrieved == []
