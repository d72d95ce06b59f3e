"""Agent turns through the session service: a real (steered) tiny model, a real Redis, the disk log and
the KV block store; tool calls streamed as events, enforced by the allow level, and recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

import engine
from agent.tools import default_tools, schemas
from sessions import SessionService, TurnOptions
from sessions.events import CacheStats, Delta, Result, ToolCall, ToolResult
from tests.agent_support import Steered, call, long_context_copy

GREEDY = dict(temperature=0.0, max_tokens=120, rag=False, system_prompt="You are terse.")


@pytest.fixture(scope="module")
def steered(tiny_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Steered:
    directory = long_context_copy(tiny_model("qwen3").path, tmp_path_factory.mktemp("agent_svc") / "qwen3")
    return Steered(engine.load_model(directory, backend="numpy"))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "notes.txt").write_text("alpha\nbeta\n")
    return tmp_path / "repo"


@pytest.fixture
def svc(redis_client: redis.Redis, steered: Steered) -> Any:
    service = SessionService(redis_client, load_model=lambda name, backend: steered)
    yield service
    service.close()


def turn(svc: SessionService, steered: Steered, repo: Path, replies: list[str], session: str | None = None,
         **options: Any) -> tuple[list[Any], Result]:  # fmt: skip
    steered.replies = list(replies)
    opts = TurnOptions(model="tiny", repo=str(repo), **{**GREEDY, "allow_tools": "read", **options})
    events = list(svc.start_turn(session, "What is in notes.txt?", opts))
    assert isinstance(events[-1], Result)
    return events, events[-1]


def test_an_agent_turn_streams_and_records_calls_and_results(svc: Any, steered: Steered, repo: Path) -> None:
    events, result = turn(svc, steered, repo, [call("read_file", path="notes.txt"), "Two lines."])
    assert not result.is_error and result.finish_reason == "stop" and result.text == "Two lines."
    assert result.steps == 2 and [r["tool"] for r in result.tool_calls] == ["read_file"]
    kinds = [e.type for e in events if e.type not in ("delta", "queued", "model_loading", "prefill")]
    assert kinds == ["session", "retrieval", "cache", "tool_call", "tool_result", "result"]
    call_event = next(e for e in events if isinstance(e, ToolCall))
    result_event = next(e for e in events if isinstance(e, ToolResult))
    assert call_event.to_dict()["type"] == "tool_call" and call_event.arguments == {"path": "notes.txt"}
    assert result_event.ok and "    2\tbeta" in result_event.result and result_event.approval["by"] == "auto"
    assert "".join(e.text for e in events if isinstance(e, Delta)) == "Two lines."  # no call markup
    shown = svc.show(result.session_id)
    assert [m.role for m in shown.messages] == ["user", "assistant", "tool", "assistant"]
    assert shown.messages[1].content.startswith("<tool_call>") and shown.messages[2].tool_results[0]["ok"]
    assert result.message == 4


def test_read_level_refuses_an_edit_and_the_model_is_told(svc: Any, steered: Steered, repo: Path) -> None:
    edit = call("edit_file", path="notes.txt", old_text="beta", new_text="gamma")
    _, result = turn(svc, steered, repo, [edit, "I may not edit."])
    assert (repo / "notes.txt").read_text() == "alpha\nbeta\n" and result.exit_code == 0
    (record,) = result.tool_calls
    assert record["approval"]["by"] == "refused" and record["kind"] == "edit"
    assert svc.show(result.session_id).messages[2].content.startswith("refused: changing files")


def test_edit_level_applies_the_edit(svc: Any, steered: Steered, repo: Path) -> None:
    edit = call("edit_file", path="notes.txt", old_text="beta", new_text="gamma")
    _, result = turn(svc, steered, repo, [edit, "Edited."], allow_tools="edit")
    assert (repo / "notes.txt").read_text() == "alpha\ngamma\n" and result.tool_calls[0]["ok"]
    assert "+gamma" in result.tool_calls[0]["data"]["diff"]


def test_a_second_agent_session_reuses_the_system_prompt_and_tools_blocks(
    svc: Any, steered: Steered, repo: Path
) -> None:
    _, first = turn(svc, steered, repo, ["Hello."])
    _, second = turn(svc, steered, repo, ["Hello again."])
    assert first.session_id != second.session_id and first.tokens["cached"] == 0
    system = [{"role": "system", "content": GREEDY["system_prompt"]}]
    prefix = len(steered.tokenizer.encode(steered.tokenizer.render_chat(
        system, add_generation_prompt=False, tools=schemas(default_tools()))))  # fmt: skip
    assert prefix > 1000  # the tool schemas are most of it
    assert second.tokens["cached"] >= prefix - 64  # whole KV blocks of 64 tokens
    assert second.tokens["prefilled"] <= second.tokens["prompt"] - second.tokens["cached"] + 40


def test_a_resumed_agent_session_extends_its_history(svc: Any, steered: Steered, repo: Path) -> None:
    _, first = turn(svc, steered, repo, [call("list_files"), "One file."])
    events, second = turn(svc, steered, repo, ["Still one."], session=first.session_id)
    cache = next(e for e in events if isinstance(e, CacheStats))
    assert not second.is_error and cache.cached_tokens > 0
    assert [m.role for m in svc.show(first.session_id).messages][-2:] == ["user", "assistant"]


def test_level_none_is_a_plain_turn(svc: Any, steered: Steered, repo: Path) -> None:
    text = call("read_file", path="notes.txt")
    events, result = turn(svc, steered, repo, [text], allow_tools="none")
    assert result.tool_calls == [] and result.steps == 0 and result.text == text
    assert not any(isinstance(e, ToolCall | ToolResult) for e in events)


@pytest.mark.parametrize(("field", "value"), [("allow_tools", "write"), ("max_turns", 0)])
def test_bad_agent_options_are_usage_errors(field: str, value: Any) -> None:
    from core.errors import UsageError

    with pytest.raises(UsageError, match=field):
        TurnOptions(**{field: value})


def test_the_cache_event_names_where_and_why_a_resumed_prompt_diverged(
    svc: Any, steered: Steered, repo: Path
) -> None:
    _, first = turn(svc, steered, repo, ["Hello."], allow_tools="none")
    events, _ = turn(svc, steered, repo, ["Again."], session=first.session_id, allow_tools="none")
    assert next(e for e in events if isinstance(e, CacheStats)).cache_bust is None  # it extends the history
    events, _ = turn(svc, steered, repo, ["Changed."], session=first.session_id, allow_tools="none",
                     system_prompt="You are verbose.")  # fmt: skip
    bust = next(e for e in events if isinstance(e, CacheStats)).cache_bust
    assert bust["reason"] == "system_prompt_changed"
    assert bust["message_index"] == 0 and bust["role"] == "system"
    assert bust["wasted_tokens"] > 0 and bust["token_index"] < bust["cached_tokens"]


def test_cancelling_an_agent_turn_kills_the_command_and_keeps_what_happened(
    svc: Any, steered: Steered, repo: Path
) -> None:
    import threading
    import time

    steered.replies = [call("run_command", command="sleep 30"), "never said"]
    opts = TurnOptions(model="tiny", repo=str(repo), **{**GREEDY, "allow_tools": "all"})
    handle = svc.start_turn(None, "Run the slow thing.", opts)
    started = time.monotonic()
    events = []
    for event in handle:
        events.append(event)
        if isinstance(event, ToolCall):  # parsed while the reply streams: the command starts a bit later
            threading.Timer(1.0, handle.cancel).start()
    result = events[-1]
    assert isinstance(result, Result) and time.monotonic() - started < 10
    assert result.finish_reason == "cancelled" and result.exit_code == 130
    assert "the loop was stopped" in result.tool_calls[0]["summary"]
    messages = svc.show(result.session_id).messages
    assert [m.role for m in messages] == ["user", "assistant", "tool"]
    assert messages[-1].tool_results[0]["data"]["ended"] == "cancelled"


def test_the_turn_after_an_agent_turn_reuses_all_of_it_and_answers_as_a_full_recompute(
    svc: Any, steered: Steered, repo: Path
) -> None:
    looking = f"Let me look.\n{call('read_file', path='notes.txt')}"
    _, first = turn(svc, steered, repo, [looking, "Two lines."])
    assert first.steps == 2 and first.tool_calls[0]["ok"]
    history = svc.show(first.session_id).history
    reference = svc.fork(first.session_id, title="reference")
    # The model now speaks freely (nothing scripted): its greedy reply depends on every cached token.
    events, second = turn(svc, steered, repo, [], session=first.session_id, max_tokens=12)
    cache = next(e for e in events if isinstance(e, CacheStats))
    assert cache.cache_bust is None and cache.cached_tokens == len(history)  # nothing recomputed
    assert second.tokens["prompt"] > len(history) and second.steps == 1 and not second.is_error
    _, recomputed = turn(svc, steered, repo, [], session=reference.id, max_tokens=12, no_cache=True)
    assert recomputed.tokens["cached"] == 0 and recomputed.tokens["prompt"] == second.tokens["prompt"]
    assert second.text == recomputed.text and second.text
