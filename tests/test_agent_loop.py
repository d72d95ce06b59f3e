"""The agent loop driven by a scripted step (given reply texts, streamed through the real parser, the real
tools and the real policy), then by a real tiny engine model made to emit given replies."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import engine
from agent.confine import Confinement
from agent.loop import LoopResult, TextEvent, ToolCallEvent, ToolResultEvent, run_loop
from agent.policy import AllowLevel, ApprovalRequest, Decision, Policy
from agent.tools import Limits, ToolContext, default_tools


class ScriptedStep:
    """Streams each reply in small deltas (so calls arrive split), then a GenerationResult."""

    def __init__(self, replies: list[str | Exception], reasoning: str = "") -> None:
        self.replies = list(replies)
        self.reasoning = reasoning
        self.seen: list[list[dict[str, Any]]] = []

    def __call__(self, messages: list[dict[str, Any]], cancel: threading.Event) -> Iterator[Any]:
        self.seen.append(messages)
        reply = self.replies.pop(0) if self.replies else "Done."
        if isinstance(reply, Exception):
            raise reply
        if self.reasoning:
            yield engine.Delta(self.reasoning, "reasoning")
        text, finish = "", "stop"
        for i in range(0, len(reply), 5):
            if cancel.is_set():
                finish = "cancelled"
                break
            text += reply[i : i + 5]
            yield engine.Delta(reply[i : i + 5], "answer")
        yield engine.GenerationResult([], text, self.reasoning, finish, 10, 10, len(text), *[0.0] * 5)


def call(name: str, **args: Any) -> str:
    import json

    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': args})}\n</tool_call>"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "app.py").write_text("def main():\n    return 1\n")
    (tmp_path / ".env").write_text("TOKEN=hunter2\n")
    return tmp_path


def ctx_for(repo: Path) -> ToolContext:
    return ToolContext(Confinement(repo), Limits(command_timeout_s=10))


def drive(step: ScriptedStep, repo: Path, policy: Policy | None = None, max_turns: int = 8,
          ctx: ToolContext | None = None) -> tuple[list[Any], LoopResult]:  # fmt: skip
    events = list(run_loop(step, [{"role": "user", "content": "fix it"}], default_tools(), policy or Policy(),
                           ctx or ctx_for(repo), "qwen3", max_turns))  # fmt: skip
    assert isinstance(events[-1], LoopResult)
    return events, events[-1]


def test_a_read_call_runs_and_its_result_is_appended_as_a_tool_message(repo: Path) -> None:
    step = ScriptedStep([f"Looking.\n{call('read_file', path='src/app.py')}", "It returns 1."])
    events, result = drive(step, repo)
    assert result.finish_reason == "stop" and len(result.steps) == 2 and result.text == "It returns 1."
    assert [m["role"] for m in result.messages] == ["assistant", "tool", "assistant"]
    tool_message = result.messages[1]
    assert tool_message["name"] == "read_file" and tool_message["tool_call_id"] == "call_1_1"
    assert "    2\t    return 1" in tool_message["content"]
    assert step.seen[1][-1] == tool_message  # the next step sees the result
    assert "".join(e.text for e in events if isinstance(e, TextEvent) and e.step == 1) == "Looking.\n"
    (record,) = result.records
    assert record.ok and record.kind == "read" and record.verdict.by == "auto"
    assert record.summary == "src/app.py: lines 1-2"
    kinds = [type(e).__name__ for e in events if not isinstance(e, TextEvent)]
    assert kinds == ["ToolCallEvent", "StepDone", "ToolResultEvent", "StepDone", "LoopResult"]


def test_headless_read_level_refuses_edits_and_tells_the_model(repo: Path) -> None:
    edit = call("edit_file", path="src/app.py", old_text="return 1", new_text="return 2")
    _, result = drive(ScriptedStep([edit, "I could not edit."]), repo, Policy(AllowLevel.READ))
    (record,) = result.records
    assert not record.ok and record.verdict.by == "refused" and record.kind == "edit"
    assert result.messages[1]["content"].startswith("refused: changing files is not allowed")
    assert "--allow-tools read" in result.messages[1]["content"]
    assert (repo / "src/app.py").read_text() == "def main():\n    return 1\n"


def test_edit_level_applies_edits_but_refuses_commands(repo: Path) -> None:
    edit = call("edit_file", path="src/app.py", old_text="return 1", new_text="return 2")
    _, result = drive(ScriptedStep([edit + call("run_command", command="touch ran")]), repo, Policy("edit"))
    applied, refused = result.records
    assert applied.ok and "+    return 2" in applied.result
    assert "return 2" in (repo / "src/app.py").read_text()
    assert refused.verdict.by == "refused" and not (repo / "ran").exists()


def test_all_level_runs_commands(repo: Path) -> None:
    _, result = drive(ScriptedStep([call("run_command", command="echo hi")]), repo, Policy("all"))
    assert result.records[0].ok and "hi\n[exit code 0]" in result.records[0].result


def test_an_approver_sees_the_diff_and_always_grants_for_the_session(repo: Path) -> None:
    asked: list[ApprovalRequest] = []

    def approver(request: ApprovalRequest) -> Decision:
        asked.append(request)
        return Decision.ALWAYS

    policy = Policy(AllowLevel.READ, approver)
    edit1 = call("edit_file", path="src/app.py", old_text="return 1", new_text="return 2")
    edit2 = call("edit_file", path="src/app.py", old_text="return 2", new_text="return 3")
    _, result = drive(ScriptedStep([edit1, edit2]), repo, policy)
    assert len(asked) == 1 and asked[0].title == "edit_file src/app.py (+1 -1)"
    assert "-    return 1\n+    return 2" in asked[0].preview
    assert [r.verdict.by for r in result.records] == ["always", "session"]
    assert "return 3" in (repo / "src/app.py").read_text()


def test_a_rejected_call_is_recorded_and_reported(repo: Path) -> None:
    policy = Policy(AllowLevel.READ, lambda request: Decision.REJECT)
    _, result = drive(ScriptedStep([call("write_file", path="x.txt", content="x")]), repo, policy)
    assert result.records[0].verdict.by == "rejected" and not (repo / "x.txt").exists()
    assert result.messages[1]["content"] == "refused: the user rejected this call"


def test_a_secret_read_needs_approval_even_at_edit_level(repo: Path) -> None:
    _, result = drive(ScriptedStep([call("read_file", path=".env")]), repo, Policy("edit"))
    assert result.records[0].kind == "secret" and "hunter2" not in result.messages[1]["content"]
    approving = Policy("edit", lambda request: Decision.APPROVE)
    _, allowed = drive(ScriptedStep([call("read_file", path=".env")]), repo, approving)
    assert "hunter2" in allowed.messages[1]["content"] and allowed.records[0].verdict.by == "user"


def test_level_none_offers_no_tools_and_runs_none(repo: Path) -> None:
    text = call("write_file", path="x.txt", content="x")
    _, result = drive(ScriptedStep([text]), repo, Policy("none"))
    assert result.records == [] and result.text == text and not (repo / "x.txt").exists()


@pytest.mark.parametrize(
    ("reply", "error"),
    [('<tool_call>{"name": "read_file", "arguments": {"path": "a"</tool_call>', "malformed tool call"),
     (call("delete_everything"), "unknown tool 'delete_everything'"),
     (call("read_file", path="../../etc/passwd"), "outside the repository"),
     (call("read_file"), "missing argument 'path'"),
     ('<tool_call>{"name": "grep", "arguments": {"regex": "(', "malformed tool call")],
)  # fmt: skip
def test_bad_calls_become_error_results_and_the_loop_goes_on(repo: Path, reply: str, error: str) -> None:
    _, result = drive(ScriptedStep([reply, "Sorry."]), repo)
    assert result.finish_reason == "stop" and result.text == "Sorry."
    assert error in result.messages[1]["content"] and result.messages[1]["content"].startswith("error: ")
    assert result.records[0].error and not result.records[0].ok


def test_the_loop_stops_after_max_turns(repo: Path) -> None:
    step = ScriptedStep([call("list_files")] * 10)
    _, result = drive(step, repo, max_turns=3)
    assert result.finish_reason == "max_turns" and len(result.steps) == 3 and len(result.records) == 3


def test_tool_calls_in_reasoning_are_not_run(repo: Path) -> None:
    step = ScriptedStep(["Answer."], reasoning=call("write_file", path="x.txt", content="x"))
    events, result = drive(step, repo)
    assert result.records == [] and not (repo / "x.txt").exists()
    assert any(isinstance(e, TextEvent) and e.kind == "reasoning" for e in events)


def test_cancel_while_generating_keeps_the_partial_reply(repo: Path) -> None:
    ctx = ctx_for(repo)
    step = ScriptedStep(["a long answer that is interrupted"])
    events = run_loop(step, [{"role": "user", "content": "q"}], default_tools(), Policy(), ctx, "qwen3")
    for ev in events:
        if isinstance(ev, TextEvent):
            ctx.cancel.set()
        if isinstance(ev, LoopResult):
            result = ev
    assert result.finish_reason == "cancelled" and result.text == "a lon"


def test_cancel_during_a_command_kills_it_and_skips_the_remaining_calls(repo: Path) -> None:
    ctx = ctx_for(repo)
    replies = [call("run_command", command="sleep 30") + call("read_file", path="src/app.py"), "never"]
    threading.Timer(0.3, ctx.cancel.set).start()
    started = time.monotonic()
    _, result = drive(ScriptedStep(replies), repo, Policy("all"), ctx=ctx)
    assert time.monotonic() - started < 5 and result.finish_reason == "cancelled"
    killed, skipped = result.records
    assert "the loop was stopped" in killed.result and skipped.result == "not run: the user stopped the loop"
    assert [m["role"] for m in result.messages] == ["assistant", "tool", "tool"]  # every call has a result


def test_an_engine_failure_ends_the_loop_keeping_what_happened(repo: Path) -> None:
    _, result = drive(ScriptedStep([call("list_files"), RuntimeError("out of memory")]), repo)
    assert result.finish_reason == "error" and "out of memory" in result.error
    assert [m["role"] for m in result.messages] == ["assistant", "tool"]


def test_records_are_plain_data_with_timing_and_approval(repo: Path) -> None:
    import json

    events, result = drive(ScriptedStep([call("grep", regex="main")]), repo)
    data = json.loads(json.dumps(result.records[0].to_dict()))
    assert data["tool"] == "grep" and data["arguments"] == {"regex": "main"}
    assert data["approval"] == {"allowed": True, "by": "auto", "reason": "", "wait_s": 0.0}
    assert data["ok"] and data["seconds"] >= 0 and data["started"] > 1e9 and data["result_chars"] > 0
    call_event = next(e for e in events if isinstance(e, ToolCallEvent))
    assert call_event.to_dict() == {"call_id": "call_1_1", "tool": "grep", "arguments": {"regex": "main"},
                                    "step": 1, "error": None}  # fmt: skip
    assert any(isinstance(e, ToolResultEvent) and e.record is result.records[0] for e in events)


def test_max_turns_must_be_positive(repo: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        list(run_loop(ScriptedStep([]), [], [], Policy(), ctx_for(repo), "qwen3", max_turns=0))
