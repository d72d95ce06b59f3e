"""Opening a session restores its KV history ahead of its first prompt, and the last session's cache
stays live in the process for its next turn (sessions/warm.py): that turn prefills only what is new."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from sessions import SessionService
from sessions.events import CacheStats, Result
from sessions.warm import LIVE_TIER, LiveCache, WarmReport
from tests.test_sessions_service import GREEDY
from tests.test_sessions_service import model_dir as model_dir  # the fixture, shared


def turn(
    service: SessionService, sid: str | None, prompt: str, **options: object
) -> tuple[CacheStats, Result]:
    from sessions import TurnOptions

    events = list(service.start_turn(sid, prompt, TurnOptions(**options)))
    result = events[-1]
    assert isinstance(result, Result) and not result.is_error, result
    return next(e for e in events if isinstance(e, CacheStats)), result


@pytest.fixture
def saved_session(redis_client: redis.Redis, model_dir: Path) -> tuple[str, list[int]]:
    """A two-turn session written by one service that is then closed (what a finished `workbench` leaves)."""
    service = SessionService(redis_client)
    try:
        _, first = turn(
            service, None, "Where is the parser?", model=str(model_dir), repo=str(model_dir), **GREEDY
        )
        turn(service, first.session_id, "And the tests?", max_tokens=8)
        history = service.show(first.session_id).history
    finally:
        service.close()
    return first.session_id, history


def test_a_second_turn_in_the_same_process_continues_the_live_cache(
    redis_client: redis.Redis, model_dir: Path
) -> None:
    service = SessionService(redis_client)
    try:
        _, first = turn(
            service, None, "Where is the parser?", model=str(model_dir), repo=str(model_dir), **GREEDY
        )
        history = service.show(first.session_id).history
        twin = service.fork(first.session_id)  # the same history, for the reference below
        cache, second = turn(service, first.session_id, "And the tests?", max_tokens=8)
        assert cache.by_tier == {LIVE_TIER: len(history)} and cache.cached_tokens == len(history)
        assert second.tokens["prefilled"] == cache.prompt_tokens - len(history)
    finally:
        service.close()
    fresh = SessionService(redis_client)  # the same turn computed from nothing
    try:
        _, reference = turn(fresh, twin.id, "And the tests?", max_tokens=8, no_cache=True)
    finally:
        fresh.close()
    assert second.text == reference.text


def test_opening_a_session_restores_its_history_before_the_first_prompt(
    redis_client: redis.Redis, saved_session: tuple[str, list[int]]
) -> None:
    sid, history = saved_session
    service = SessionService(redis_client)  # a new process: nothing of the session in memory
    try:
        twin = service.fork(sid)  # the same history, for the reference below
        report = service.warm(sid).result(timeout=120)
        assert isinstance(report, WarmReport) and not report.skipped
        assert report.tokens == len(history) == report.history_tokens
        assert set(report.by_tier) <= {"disk", "redis"} and sum(report.by_tier.values()) == len(history)
        assert report.describe().startswith(f"restored {len(history):,} tokens from ")
        cache, third = turn(service, sid, "One more thing?", max_tokens=8)
        # Nothing read again: the warm cache served all the prompt shares with the history (up to a
        # template re-render of an earlier reply, when the random model's bytes do not round-trip).
        reusable = (cache.cache_bust or {}).get("token_index", len(history))
        assert cache.by_tier == {LIVE_TIER: reusable} and cache.cached_tokens == reusable > 0
        assert cache.restore_s < report.seconds
        # Opening it again once it is live restores nothing more.
        again = service.warm(sid).result(timeout=60)
        assert again.by_tier == {LIVE_TIER: len(service.show(sid).history)}
    finally:
        service.close()
    fresh = SessionService(redis_client)
    try:
        _, reference = turn(fresh, twin.id, "One more thing?", max_tokens=8, no_cache=True)
    finally:
        fresh.close()
    assert third.text == reference.text


def test_nothing_to_restore_is_said_not_hidden(redis_client: redis.Redis, model_dir: Path) -> None:
    service = SessionService(redis_client)
    try:
        empty = service.create(repo=str(model_dir), model=str(model_dir))
        report = service.warm(empty.id).result(timeout=120)
        assert (
            report.tokens == 0
            and report.describe() == "nothing restored: the session has no saved history yet"
        )
        with pytest.raises(Exception, match="no-such-session"):
            service.warm("no-such-session").result(timeout=30)
    finally:
        service.close()


def test_a_cache_over_the_live_budget_is_not_kept(
    saved_session: tuple[str, list[int]], redis_client: redis.Redis
) -> None:
    sid, history = saved_session
    service = SessionService(redis_client)
    service._live.budget_bytes = 0  # as WORKBENCH_KV_LIVE_MB=0
    try:
        report = service.warm(sid).result(timeout=120)
        assert report.tokens == len(history) and "over the live-cache budget" in report.skipped
        cache, _ = turn(service, sid, "One more thing?", max_tokens=8)
        assert LIVE_TIER not in cache.by_tier and cache.cached_tokens > 0  # restored from blocks instead
    finally:
        service.close()


def test_the_live_cache_gives_a_prompt_only_its_common_prefix() -> None:
    class Cache:
        def __init__(self, n: int) -> None:
            self.offset = n

        def nbytes(self) -> int:
            return 1

        def trim(self, n: int) -> None:
            self.offset = n

    live = LiveCache(budget_bytes=10)
    live.keep("s1", "fp", [1, 2, 3, 4], Cache(4))
    assert live.take("s2", "fp", [1, 2, 3, 4, 5]) is None  # another session's: released, not given
    assert live.holds("s1") == 0
    live.keep("s1", "fp", [1, 2, 3, 4], Cache(4))
    assert live.take("s1", "other-model", [1, 2, 3, 4, 5]) is None
    live.keep("s1", "fp", [1, 2, 3, 4], Cache(4))
    assert live.take("s1", "fp", [1, 2, 9, 9]).offset == 2  # diverged at the third token
    live.keep("s1", "fp", [1, 2, 3, 4], Cache(4))
    assert live.take("s1", "fp", [1, 2, 3, 4]).offset == 3  # one token left to prefill, for its logits
    assert not live.keep("s1", "fp", [1, 2, 3], Cache(4))  # a cache must hold exactly the ids it is kept for
