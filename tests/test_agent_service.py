"""Agent turns in the session service, beyond one loop: each step's prefill progress and partial records,
a cancel mid-loop keeping the steps that happened, and approvals as events the caller answers while the
engine thread runs other turns (a scripted caller answers late). A real (steered) tiny model, real Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

import engine
from agent.policy import Decision, Policy
from sessions import SessionService, TurnOptions
from sessions.events import ApprovalNeeded, Delta, Prefill, Result, ToolCall, ToolResult
from tests.agent_support import Steered, call, long_context_copy

GREEDY = dict(temperature=0.0, max_tokens=120, rag=False, system_prompt="You are terse.")
EDIT = call("edit_file", path="notes.txt", old_text="beta", new_text="gamma")


@pytest.fixture(scope="module")
def model_dir(tiny_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return long_context_copy(tiny_model("qwen3").path, tmp_path_factory.mktemp("agent_svc2") / "qwen3")


@pytest.fixture(scope="module")
def steered(model_dir: Path) -> Steered:
    return Steered(engine.load_model(model_dir, backend="numpy"))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "notes.txt").write_text("alpha\nbeta\n")
    return tmp_path / "repo"


@pytest.fixture
def svc(redis_client: redis.Redis, steered: Steered) -> Any:
    service = SessionService(redis_client, load_model=lambda name, backend: steered, partial_interval_s=0.0)
    yield service
    service.close(cancel_pending=True, timeout=30)


def options(repo: Path, **overrides: Any) -> TurnOptions:
    return TurnOptions(model="tiny", repo=str(repo), **{**GREEDY, "allow_tools": "read", **overrides})


def test_each_step_reports_prefill_and_a_cancel_in_the_second_step_keeps_the_first(
    svc: Any, steered: Steered, repo: Path
) -> None:
    long_reply = "The notes say alpha and beta, " * 40
    steered.script(call("read_file", path="notes.txt"), long_reply)
    handle = svc.start_turn(None, "What is in notes.txt?", options(repo, max_tokens=1000))
    events: list[Any] = []
    second_step_deltas = 0
    for event in handle:
        events.append(event)
        if isinstance(event, Delta) and any(isinstance(e, ToolResult) for e in events):
            second_step_deltas += 1
            if second_step_deltas == 5:
                handle.cancel()
    result = events[-1]
    assert isinstance(result, Result) and result.finish_reason == "cancelled" and result.exit_code == 130
    # Both steps reported their prefill, as a chat turn does.
    first_result = next(i for i, e in enumerate(events) if isinstance(e, ToolResult))
    assert any(isinstance(e, Prefill) for e in events[:first_result])
    step2 = [e for e in events[first_result:] if isinstance(e, Prefill)]
    assert step2 and step2[-1].done == step2[-1].total
    # The session keeps step 1's call and result, and step 2's partial reply marked interrupted.
    messages = svc.show(result.session_id).messages
    assert [m.role for m in messages] == ["user", "assistant", "tool", "assistant"]
    assert messages[1].content.startswith("<tool_call>") and messages[1].status == "complete"
    assert messages[2].tool_results[0]["ok"] and "beta" in messages[2].content
    assert messages[3].status == "interrupted" and messages[3].finish_reason == "cancelled"
    assert messages[3].content and long_reply.startswith(messages[3].content)
    # Step 2 streamed partial records first (what a kill -9 would have left).
    log = Path(os.environ["WORKBENCH_HOME"]) / "sessions" / f"{result.session_id}.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    partial_at = [i for i, r in enumerate(records) if r["t"] == "partial" and r["n"] == 3]
    final_at = next(i for i, r in enumerate(records) if r["t"] == "message" and r["n"] == 3)
    assert partial_at and max(partial_at) < final_at


def test_an_approval_waits_off_the_engine_thread_while_another_session_runs(
    svc: Any, steered: Steered, repo: Path
) -> None:
    steered.script(EDIT, "B is done.", "Edited.")  # A's step 1, then B's turn, then A's step 2
    agent = svc.start_turn(None, "Change beta.", options(repo, allow_tools="read", ask_approval=True))
    asked: list[ApprovalNeeded] = []
    other: list[Result] = []
    for event in agent:
        if isinstance(event, ApprovalNeeded):  # the scripted user answers late: after a whole other turn
            asked.append(event)
            assert (repo / "notes.txt").read_text() == "alpha\nbeta\n"  # nothing applied yet
            other.append(svc.start_turn(None, "Something else?", options(repo, allow_tools="none")).wait(30))
            assert agent.answer(event.call_id, "approve")
    result = agent.result
    assert other and not other[0].is_error and other[0].text == "B is done."
    (request,) = asked
    assert request.tool == "edit_file" and request.kind == "edit" and "+gamma" in request.preview
    assert not result.is_error and result.text == "Edited."
    assert (repo / "notes.txt").read_text() == "alpha\ngamma\n"
    (record,) = result.tool_calls
    assert record["approval"]["by"] == "user" and record["approval"]["wait_s"] > 0
    assert not agent.answer(request.call_id, "approve")  # answered once


def test_cancel_while_an_approval_waits_rejects_and_stops_at_once(
    svc: Any, steered: Steered, repo: Path
) -> None:
    steered.script(EDIT, "never said")
    handle = svc.start_turn(None, "Change beta.", options(repo, allow_tools="read", ask_approval=True))
    cancelled_at = 0.0
    for event in handle:
        if isinstance(event, ApprovalNeeded):
            cancelled_at = time.monotonic()
            handle.cancel()  # Esc while the question is open
    result = handle.result
    assert result is not None and time.monotonic() - cancelled_at < 2
    assert result.finish_reason == "cancelled" and result.exit_code == 130 and result.steps == 1
    (record,) = result.tool_calls
    assert record["approval"]["by"] == "rejected" and "stopped" in record["approval"]["reason"]
    assert (repo / "notes.txt").read_text() == "alpha\nbeta\n"
    assert [m.role for m in svc.show(result.session_id).messages] == ["user", "assistant", "tool"]


def test_always_lasts_for_the_callers_policy(svc: Any, steered: Steered, repo: Path) -> None:
    policy = Policy("read")  # the caller keeps one per session: its "always" grants
    steered.script(EDIT, "Done once.")
    first = svc.start_turn(None, "Change beta.", options(repo, policy=policy, ask_approval=True))
    for event in first:
        if isinstance(event, ApprovalNeeded):
            first.answer(event.call_id, "always")
    assert first.result.tool_calls[0]["approval"]["by"] == "always"
    steered.script(call("edit_file", path="notes.txt", old_text="gamma", new_text="delta"), "Twice.")
    again = options(repo, policy=policy, ask_approval=True)
    second = svc.start_turn(first.result.session_id, "Again.", again)
    events = list(second)
    assert not any(isinstance(e, ApprovalNeeded) for e in events)  # granted for the session: not asked
    assert second.result.tool_calls[0]["approval"]["by"] == "session"
    assert (repo / "notes.txt").read_text() == "alpha\ndelta\n"


def test_a_callable_approver_still_works_and_is_not_called_on_the_engine_thread(
    svc: Any, steered: Steered, repo: Path
) -> None:
    threads: list[str] = []

    def approver(request: Any) -> Decision:  # the old call shape (the TUI's TuiApprover until it moves)
        threads.append(threading.current_thread().name)
        return Decision.APPROVE

    steered.script(EDIT, "Edited.")
    handle = svc.start_turn(None, "Change beta.", options(repo, policy=Policy("read", approver)))
    events = list(handle)
    assert threads and threads[0] != "wb-engine" and (repo / "notes.txt").read_text() == "alpha\ngamma\n"
    assert any(isinstance(e, ToolCall) for e in events)
    assert handle.result.tool_calls[0]["approval"]["by"] == "user"


def test_a_turn_of_the_same_session_waits_for_the_agent_turn_and_a_cancel_ends_it_at_once(
    svc: Any, steered: Steered, repo: Path
) -> None:
    steered.script(EDIT, "Edited.", "Next turn.")
    agent = svc.start_turn(None, "Change beta.", options(repo, ask_approval=True))
    queued: list[Any] = []
    for event in agent:
        if isinstance(event, ApprovalNeeded):
            sid = agent.session_id
            later = svc.start_turn(sid, "And now?", options(repo, allow_tools="none"))
            dropped = svc.start_turn(sid, "Never mind.", options(repo, allow_tools="none"))
            time.sleep(0.5)  # the engine thread is free: were they not held back, they would run now
            assert not later.done and not dropped.done
            dropped.cancel()
            assert dropped.wait(2) is not None and dropped.result.finish_reason == "cancelled"
            queued.append(later)
            agent.answer(event.call_id, "approve")
    assert agent.result.text == "Edited."
    (later,) = queued
    result = later.wait(30)
    assert result is not None and result.text == "Next turn." and not result.is_error
    roles = [m.role for m in svc.show(agent.result.session_id).messages]
    assert roles == ["user", "assistant", "tool", "assistant", "user", "assistant"]  # in order


def test_cancel_while_a_step_waits_behind_another_turn_ends_the_turn_at_once(
    svc: Any, steered: Steered, repo: Path
) -> None:
    steered.script(EDIT)  # then the model speaks freely: the other turn runs to its max_tokens
    agent = svc.start_turn(None, "Change beta.", options(repo, ask_approval=True))
    other = None
    for event in agent:
        if isinstance(event, ApprovalNeeded):
            long = options(repo, allow_tools="none", max_tokens=3000)
            other = svc.start_turn(None, "Tell a long story.", long)
            next(e for e in other if isinstance(e, Delta))  # it holds the engine thread now
            agent.answer(event.call_id, "approve")  # step 2 is queued behind it
            time.sleep(0.2)
            agent.cancel()
    result = agent.result
    assert other is not None and not other.done  # the agent turn did not wait for it
    assert result.finish_reason == "cancelled" and result.steps == 2 and result.tool_calls[0]["ok"]
    assert [m.role for m in svc.show(result.session_id).messages] == ["user", "assistant", "tool"]
    other.cancel()
    assert other.wait(10) is not None


CHILD = """
import json, sys
import engine
from sessions import SessionService, TurnOptions
from tests.agent_support import Steered
steered = Steered(engine.load_model(sys.argv[1], backend="numpy"), json.loads(sys.argv[3]))
svc = SessionService(load_model=lambda name, backend: steered, partial_interval_s=0.0)
turn = svc.start_turn(None, "What is in notes.txt?", TurnOptions(model="tiny", repo=sys.argv[2],
                      allow_tools="read", temperature=0.0, max_tokens=3000, rag=False))
for event in turn:
    if event.type == "session":
        print(event.session_id, flush=True)
"""


def test_a_process_killed_in_the_second_step_leaves_the_first_step_recorded(
    redis_client: redis.Redis, model_dir: Path, repo: Path
) -> None:
    root = Path(__file__).resolve().parent.parent
    replies = [call("read_file", path="notes.txt"), "The notes say alpha and beta. " * 80]
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(model_dir), str(repo), json.dumps(replies)],
                             stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(root)})  # fmt: skip
    sid = child.stdout.readline().decode().strip()
    log = Path(os.environ["WORKBENCH_HOME"]) / "sessions" / f"{sid}.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # kill once step 2 (message 3) has a partial record wholly on disk
        data = log.read_bytes() if log.exists() else b""
        if b'"t":"partial","n":3' in data.replace(b" ", b"") and data.endswith(b"\n"):
            break
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    with SessionService(redis_client) as svc:
        messages = svc.show(sid).messages
    assert [m.role for m in messages] == ["user", "assistant", "tool", "assistant"]
    assert messages[1].content.startswith("<tool_call>") and messages[2].tool_results[0]["ok"]
    assert messages[3].status == "interrupted" and replies[1].startswith(messages[3].content)
