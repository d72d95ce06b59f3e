"""Prompts that fit the model's context (issue 14): retrieval gets the room left, old turns make way,
and a message too long on its own says by how much."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from sessions import SessionService, TurnOptions
from sessions.events import CacheStats, Result, Retrieval

CONTEXT = 384


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.fixtures.tiny_models import _SMALL, Spec, build_spec

    spec = Spec("qwen3", "qwen3", "v5", tied=True, sizes={**_SMALL, "max_position_embeddings": CONTEXT})
    return build_spec("qwen3_small_context", spec, tmp_path_factory.mktemp("models"), seed=79).path


@pytest.fixture
def svc(redis_client: redis.Redis) -> SessionService:
    service = SessionService(redis_client)
    yield service
    service.close()


def turn(svc: SessionService, session_id: str | None, prompt: str, **options: object) -> tuple[list, Result]:
    events = list(svc.start_turn(session_id, prompt, TurnOptions(**options)))
    return events, events[-1]


def test_a_first_prompt_over_the_context_says_the_limit_and_how_far_over(
    svc: SessionService, model_dir: Path
) -> None:
    prompt = "word " * (CONTEXT + 100)
    _, result = turn(svc, None, prompt, model=str(model_dir), rag=False, max_tokens=8)
    assert result.is_error and result.session_id is None
    assert f"context of {CONTEXT} tokens" in result.error and "tokens over" in result.error
    over = int(result.error.split(" tokens over")[0].rsplit(" ", 1)[-1])
    assert over > 100 and "fork" not in result.error
    assert svc.list() == []  # nothing stored


def test_a_long_session_drops_its_oldest_turns_and_keeps_going(svc: SessionService, model_dir: Path) -> None:
    options = dict(model=str(model_dir), rag=False, temperature=0.0, max_tokens=24)
    sid = None
    dropped: list[CacheStats] = []
    for n in range(12):
        events, result = turn(svc, sid, f"Question {n}: " + "tell me about the parser " * 6, **options)
        assert not result.is_error, result.error
        sid = result.session_id
        options = dict(max_tokens=24)
        cache = next(e for e in events if isinstance(e, CacheStats))
        assert cache.prompt_tokens + 1 <= CONTEXT
        if cache.dropped_messages:
            dropped.append(cache)
    assert dropped, "the session outgrew the context without leaving anything out"
    assert all(c.dropped_messages % 2 == 0 and c.dropped_tokens > 0 for c in dropped)  # whole turns
    session = svc.show(sid)
    assert len(session.messages) == 24  # the transcript keeps every message
    assert session.messages[-1].cache["dropped_messages"] == dropped[-1].dropped_messages


def test_the_retrieval_budget_is_the_room_the_context_leaves(
    svc: SessionService, model_dir: Path, tmp_path: Path
) -> None:
    from indexer import Index

    repo = tmp_path / "repo"
    repo.mkdir()
    body = "".join(f"    value_{i} = parse_line(line_{i})\n" for i in range(60))
    (repo / "parser.py").write_text(f"def parse_config(path):\n{body}    return path\n")
    Index.open(repo).update()
    events, result = turn(svc, None, "How does parse_config work?", model=str(model_dir), repo=str(repo),
                          rag=True, max_tokens=64)  # fmt: skip
    assert not result.is_error, result.error
    retrieval = next(e for e in events if isinstance(e, Retrieval))
    cache = next(e for e in events if isinstance(e, CacheStats))
    assert 0 < retrieval.budget < 1536 and retrieval.tokens <= retrieval.budget
    assert cache.prompt_tokens + 64 <= CONTEXT


def test_an_agent_prompt_the_tool_schemas_overflow_names_the_context_and_their_cost(
    svc: SessionService, model_dir: Path
) -> None:
    options = dict(model=str(model_dir), rag=False, max_tokens=8)
    _, result = turn(svc, None, "What is in notes.txt?", allow_tools="read", **options)
    assert result.is_error and result.exit_code == 1 and result.session_id is None
    assert f"context of {CONTEXT} tokens" in result.error and "--allow-tools none" in result.error
    schema_tokens = int(result.error.split("the tool schemas (")[1].split(" tokens")[0])
    assert schema_tokens > CONTEXT and "without them it fits" in result.error
    _, plain = turn(svc, None, "What is in notes.txt?", allow_tools="none", **options)
    assert not plain.is_error and plain.tokens["prompt"] < CONTEXT
