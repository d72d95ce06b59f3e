"""A session service a UI can sit on: nothing blocks the caller, each wait is reported, cancel works."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from core import redis_server
from sessions import SessionService, TurnOptions
from sessions.events import CacheStats, ModelLoading, Prefill, Queued, Result, TextDelta

ROOT = Path(__file__).resolve().parent.parent
GREEDY = dict(temperature=0.0, max_tokens=8, rag=False)
CANCEL_WITHIN_S = 1.0


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.fixtures.tiny_models import _SMALL, Spec, build_spec

    spec = Spec("qwen3", "qwen3", "v5", tied=True, sizes={**_SMALL, "max_position_embeddings": 4096})
    return build_spec("qwen3_responsive", spec, tmp_path_factory.mktemp("models"), seed=78).path


@pytest.fixture
def svc(redis_client: redis.Redis) -> Iterator[SessionService]:
    service = SessionService(redis_client)
    yield service
    service.close(cancel_pending=True, timeout=30)


def first_of(turn, kind: type, timeout: float = 30.0):
    """The first event of type `kind`, read on a thread so that a hang fails the test instead."""
    found: list = []

    def read() -> None:
        found.extend(e for e in turn if isinstance(e, kind))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while not found and time.monotonic() < deadline:
        time.sleep(0.005)
    assert found, f"no {kind.__name__} event within {timeout} s"
    return found[0]


def cancelled_in_time(turn) -> Result:
    t0 = time.monotonic()
    turn.cancel()
    result = turn.wait(CANCEL_WITHIN_S * 5)
    elapsed = time.monotonic() - t0
    assert result is not None and result.finish_reason == "cancelled", result
    assert elapsed < CANCEL_WITHIN_S, f"the cancel took {elapsed:.2f} s"
    return result


def test_importing_the_event_types_loads_no_redis_numpy_or_engine() -> None:
    code = (
        "import sys, sessions.events, sessions.turn\n"
        "from sessions import TextDelta, Turn\n"
        "print(sorted(m for m in ('redis', 'numpy', 'engine', 'sessions.service') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out


@pytest.fixture
def slow_redis(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, workbench_env: Path) -> Iterator[float]:
    """No REDIS_URL and a real redis-server that takes a second to start (on a slow disk, say)."""
    delay = 1.0
    real = redis_server.find_server_binary()
    wrapper = tmp_path / "slow-redis-server"
    wrapper.write_text(f'#!/bin/sh\n[ "$1" = --version ] || sleep {delay}\nexec "{real}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("WORKBENCH_REDIS_SERVER", str(wrapper))
    monkeypatch.setenv("WORKBENCH_REDIS_MAXMEMORY", "64mb")
    redis_server.reset_clients()
    yield delay
    redis_server.stop_embedded()
    redis_server.reset_clients()


def test_constructor_and_start_turn_return_at_once_while_redis_starts(
    slow_redis: float, model_dir: Path
) -> None:
    t0 = time.perf_counter()
    svc = SessionService()
    built = time.perf_counter() - t0
    t1 = time.perf_counter()
    turn = svc.start_turn(None, "hello", TurnOptions(model=str(model_dir), **GREEDY))
    started = time.perf_counter() - t1
    try:
        assert not svc.ready, "Redis was still starting: the calls above must not have waited for it"
        assert built < 0.05 and started < 0.05, (built, started)
        assert turn.session_id is None  # no id before the session exists
        result = turn.wait(60)
        assert result is not None and not result.is_error, result
        assert svc.ready and turn.session_id == result.session_id and svc.show(result.session_id)
    finally:
        svc.close(timeout=30)


def test_cancel_during_the_model_load_ends_the_turn_within_a_second(
    redis_client: redis.Redis, model_dir: Path
) -> None:
    import engine

    disk = threading.Event()  # the weights come off a slow disk until the test lets them through

    def slow_load(name: str, backend: str | None) -> engine.Model:
        disk.wait(30)
        return engine.load_model(name, backend=backend)

    svc = SessionService(redis_client, load_model=slow_load)
    try:
        turn = svc.start_turn(None, "hello", TurnOptions(model=str(model_dir), **GREEDY))
        loading = first_of(turn, ModelLoading)
        assert loading.name == str(model_dir) and loading.bytes > 0 and not loading.done
        result = cancelled_in_time(turn)
        assert result.session_id is None and not result.is_error
        assert svc.list() == []  # nothing was stored
        disk.set()  # the load finishes in the background and serves the next turn
        again = svc.start_turn(None, "hello", TurnOptions(model=str(model_dir), **GREEDY)).wait(60)
        assert again is not None and not again.is_error
    finally:
        disk.set()
        svc.close(timeout=30)


def test_cancel_during_retrieval_ends_the_turn_within_a_second(
    svc: SessionService, model_dir: Path, tmp_path: Path, redis_client: redis.Redis
) -> None:
    from indexer import Index

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "parser.py").write_text("def parse_config(path):\n    return open(path).read()\n")
    ix = Index.open(repo)
    ix.update()
    (repo / "parser.py").write_text("def parse_config(path):\n    return open(path).read().split()\n")
    # Another process is re-indexing: its writer lease makes this turn's index refresh wait for minutes.
    key = ix.store.writer_lease("another-writer").key
    redis_client.set(key, b"another-writer", ex=600)
    options = TurnOptions(model=str(model_dir), repo=str(repo), **{**GREEDY, "rag": True})
    turn = svc.start_turn(None, "How does parse_config work?", options)
    first_of(turn, ModelLoading)
    time.sleep(0.5)  # well into the refresh, waiting on the lease
    assert not turn.done
    result = cancelled_in_time(turn)
    assert result.session_id is None and svc.list() == []
    redis_client.delete(key)


def test_prefill_progress_arrives_in_order_and_ends_at_the_total(
    svc: SessionService, model_dir: Path
) -> None:
    long_prompt = "Explain every line of the parser, the cache and the loader in detail. " * 40
    turn = svc.start_turn(None, long_prompt, TurnOptions(model=str(model_dir), **GREEDY))
    events = list(turn)
    cache = next(e for e in events if isinstance(e, CacheStats))
    prefill = [e for e in events if isinstance(e, Prefill)]
    assert prefill, "a prefill reports its progress"
    done = [e.done for e in prefill]
    assert done == sorted(set(done)) and all(e.total == cache.prefill_tokens for e in prefill)
    assert done[-1] == cache.prefill_tokens
    first_delta = next(i for i, e in enumerate(events) if isinstance(e, TextDelta))
    assert events.index(cache) < events.index(prefill[0]) and events.index(prefill[-1]) < first_delta


def test_engine_reports_prefill_progress_layer_by_layer(model_dir: Path) -> None:
    import engine

    model = engine.load_model(str(model_dir))
    model.prefill_chunk = 64  # several chunks, each reported between its layers
    seen: list[tuple[int, int]] = []
    ids = model.tokenizer.encode("def parse_config(path): return open(path).read() " * 20)
    last = model.forward(ids, model.make_cache(), progress=lambda done, total: seen.append((done, total)))
    assert {total for _, total in seen} == {len(ids)}
    done = [d for d, _ in seen]
    assert done == sorted(done) and done[-1] == len(ids) and len(set(done)) > len(ids) // 64
    reference = model.forward(ids, model.make_cache())
    assert (last == reference).all()  # reporting changes nothing computed


def test_a_turn_behind_another_is_queued_and_cancelled_at_once(svc: SessionService, model_dir: Path) -> None:
    long = svc.start_turn(
        None, "Write a long essay.", TurnOptions(model=str(model_dir), **{**GREEDY, "max_tokens": 3000})
    )
    first_of(long, TextDelta)
    waiting = svc.start_turn(None, "hello", TurnOptions(model=str(model_dir), **GREEDY))
    queued = first_of(waiting, Queued)
    assert queued.position == 1 and queued.session_id is None
    cancelled_in_time(waiting)
    assert not long.done  # the running turn went on
    cancelled_in_time(long)


def test_close_cancels_pending_turns_and_returns_in_time(redis_client: redis.Redis, model_dir: Path) -> None:
    svc = SessionService(redis_client)
    options = TurnOptions(model=str(model_dir), **{**GREEDY, "max_tokens": 3000})
    turns = [svc.start_turn(None, f"Essay {i}.", options) for i in range(2)]
    first_of(turns[0], TextDelta)
    t0 = time.monotonic()
    assert svc.close(cancel_pending=True, timeout=10) is True
    assert time.monotonic() - t0 < 5
    assert [t.result.finish_reason for t in turns] == ["cancelled", "cancelled"]


def test_start_up_failure_is_the_turns_result(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("REDIS_URL", f"unix://{tmp_path}/no-redis.sock")
    svc = SessionService()
    turn = svc.start_turn(None, "hi", TurnOptions())
    result = turn.wait(30)
    assert result.is_error and result.exit_code == 1 and "no-redis.sock" in result.error
    with pytest.raises(Exception, match=r"no-redis\.sock"):
        svc.wait_ready()
    svc.close(timeout=5)


def test_an_unknown_session_is_the_turns_result_not_an_exception(svc: SessionService) -> None:
    result = svc.start_turn("0123456789abcdef", "hi", TurnOptions()).wait(30)
    assert result.is_error and result.exit_code == 3 and "0123456789abcdef" in result.error


def test_async_callers_wait_without_blocking_the_loop(svc: SessionService, model_dir: Path) -> None:
    import asyncio

    async def main() -> tuple[list, Result]:
        await svc.ready_async()
        turn = svc.start_turn(None, "hello", TurnOptions(model=str(model_dir), **GREEDY))
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while not turn.done:
                ticks += 1
                await asyncio.sleep(0.001)

        ticker = asyncio.create_task(tick())
        result = await turn.wait_async()
        await ticker
        listed = await svc.call_async(svc.list)
        assert ticks > 5  # the loop kept running while the turn ran
        return listed, result

    listed, result = asyncio.run(main())
    assert [s.id for s in listed] == [result.session_id]
