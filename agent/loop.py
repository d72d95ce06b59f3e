"""The agent loop: generate, run the tool calls in the reply, append their results, generate again.

`run_loop` is written against a `step` callable (messages -> streamed events) so that the session runner
(with its KV blocks), `agent.step.EngineStep` (an engine model) or a test's scripted step all plug in.
The loop owns no model and no storage: it yields events and ends with a `LoopResult` holding the
messages it appended and a `ToolRecord` per call, plain data for the transcript and stream-json.

Cancellation (the `cancel` event, shared with the step, the tools and approvals) stops at once and keeps
what happened: the partial reply is appended, every call it made gets a result (a stopped command reports
that it was killed; calls not started report that they were not run), so the history stays well-formed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.confine import PathRefused
from agent.parse import CallError, ParseEvent, TextPiece, ToolCall, parser_for
from agent.policy import ApprovalRequest, Policy, Verdict
from agent.tools.base import Tool, ToolContext, ToolError

_STEP_INFO = ("prompt_tokens", "cached_tokens", "prefilled_tokens", "generated_tokens", "ttft_s",
              "cache_bust")  # fmt: skip


class StepFinal(Protocol):
    text: str
    reasoning: str
    finish_reason: str


# A step: the messages so far and the cancel event -> engine.Delta-like events (`text`, `kind`), then one
# StepFinal (an engine.GenerationResult will do).
Step = Callable[[list[dict[str, Any]], threading.Event], Iterable[Any]]


@dataclass
class TextEvent:
    text: str
    kind: str  # "answer" | "reasoning"
    step: int


@dataclass
class ToolCallEvent:
    call_id: str
    tool: str  # "" when not even the name could be read
    arguments: dict[str, Any]
    step: int
    error: str | None = None  # the call is malformed: its result will be this error

    def to_dict(self) -> dict[str, Any]:
        return {"call_id": self.call_id, "tool": self.tool, "arguments": self.arguments, "step": self.step,
                "error": self.error}  # fmt: skip


@dataclass
class ToolRecord:
    call_id: str
    tool: str
    arguments: dict[str, Any]
    step: int
    kind: str | None = None  # None: the call never got as far as a kind (malformed, unknown tool)
    title: str = ""
    verdict: Verdict | None = None
    ok: bool = False
    summary: str = ""
    error: str | None = None
    result: str = ""  # what the model was given
    data: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0  # epoch seconds
    seconds: float = 0.0  # running the tool (approval wait excluded: see verdict.wait_s)

    def to_dict(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id, "tool": self.tool, "arguments": self.arguments, "step": self.step,
            "kind": self.kind, "title": self.title, "ok": self.ok, "summary": self.summary,
            "error": self.error,
            "approval": self.verdict.to_dict() if self.verdict else None, "result_chars": len(self.result),
            "data": self.data, "started": round(self.started, 3), "seconds": round(self.seconds, 4),
        }  # fmt: skip


@dataclass
class ToolResultEvent:
    record: ToolRecord


@dataclass
class StepInfo:
    step: int
    finish_reason: str
    seconds: float
    calls: int
    info: dict[str, Any] = field(default_factory=dict)  # prompt/cached/prefilled/generated tokens, cache_bust


@dataclass
class StepDone:
    """A generation ended and its reply is in the history (before its calls run): a transcript records
    it here, so a turn stopped later keeps it."""

    info: StepInfo
    reply: dict[str, Any]  # the assistant message appended


@dataclass
class LoopResult:
    messages: list[dict[str, Any]]  # appended by the loop: assistant replies and tool results
    records: list[ToolRecord]
    steps: list[StepInfo]
    finish_reason: str  # stop | length | stop_string | max_turns | cancelled | error
    error: str | None = None

    @property
    def text(self) -> str:
        """The final answer: the last reply's text (tool-call markup included, as generated)."""
        replies = [m for m in self.messages if m["role"] == "assistant"]
        return replies[-1]["content"] if replies else ""


LoopEvent = TextEvent | ToolCallEvent | ToolResultEvent | StepDone | LoopResult


class AgentLoop:
    def __init__(self, step: Step, tools: Sequence[Tool], policy: Policy, ctx: ToolContext, dialect: str,
                 max_turns: int = 8) -> None:  # fmt: skip
        if max_turns < 1:
            raise ValueError(f"max_turns must be at least 1 (got {max_turns})")
        self.step, self.policy, self.ctx, self.dialect = step, policy, ctx, dialect
        self.tools = {tool.name: tool for tool in tools}
        self.max_turns = max_turns

    @property
    def cancel(self) -> threading.Event:
        return self.ctx.cancel

    def run(self, messages: Sequence[dict[str, Any]]) -> Iterator[LoopEvent]:
        history = list(messages)
        result = LoopResult([], [], [], "max_turns")
        for n in range(1, self.max_turns + 1):
            calls: list[ToolCall | CallError] = []
            started = time.monotonic()
            try:
                final = yield from self._generate(history, n, calls)
            except Exception as exc:  # the engine failed: end the loop, keeping what happened before
                result.finish_reason, result.error = "error", f"{type(exc).__name__}: {exc}"
                break
            reply: dict[str, Any] = {"role": "assistant", "content": final.text}
            if getattr(final, "reasoning", ""):
                reply["reasoning_content"] = final.reasoning
            self._append(history, result, reply)
            info = {k: getattr(final, k) for k in _STEP_INFO if getattr(final, k, None) is not None}
            seconds = time.monotonic() - started
            result.steps.append(StepInfo(n, final.finish_reason, seconds, len(calls), info))
            yield StepDone(result.steps[-1], reply)
            for call in calls:
                record = self._execute(call, n)
                result.records.append(record)
                message = {"role": "tool", "name": record.tool or "invalid", "tool_call_id": record.call_id,
                           "content": record.result}  # fmt: skip
                self._append(history, result, message)
                yield ToolResultEvent(record)
            if self.cancel.is_set() or final.finish_reason == "cancelled":
                result.finish_reason = "cancelled"
                break
            if not calls:
                result.finish_reason = final.finish_reason
                break
        yield result

    @staticmethod
    def _append(history: list[dict[str, Any]], result: LoopResult, message: dict[str, Any]) -> None:
        history.append(message)
        result.messages.append(message)

    def _generate(self, history: list[dict[str, Any]], n: int, calls: list[ToolCall | CallError]
                  ) -> Iterator[LoopEvent]:  # fmt: skip
        parser = parser_for(self.dialect, id_prefix=f"call_{n}_") if self.policy.offers_tools else None
        final = None
        for ev in self.step(list(history), self.cancel):
            if not hasattr(ev, "finish_reason"):
                kind = getattr(ev, "kind", "answer")
                if kind != "answer" or parser is None:  # calls inside reasoning are thoughts, not calls
                    yield TextEvent(ev.text, kind, n)
                else:
                    yield from self._parsed(parser.feed(ev.text), n, calls)
            else:
                final = ev
        if parser is not None:
            yield from self._parsed(parser.close(), n, calls)
        if final is None:
            raise RuntimeError("the step ended without a final result")
        return final

    def _parsed(self, events: list[ParseEvent], n: int, calls: list[ToolCall | CallError]
                ) -> Iterator[LoopEvent]:  # fmt: skip
        for ev in events:
            if isinstance(ev, TextPiece):
                yield TextEvent(ev.text, "answer", n)
            elif isinstance(ev, ToolCall):
                calls.append(ev)
                yield ToolCallEvent(ev.id, ev.name, ev.arguments, n)
            else:
                calls.append(ev)
                yield ToolCallEvent(ev.id, ev.name or "", {}, n, error=ev.error)

    def _execute(self, call: ToolCall | CallError, n: int) -> ToolRecord:
        if isinstance(call, CallError):
            return _failed(ToolRecord(call.id, call.name or "", {}, n), f"malformed tool call: {call.error}")
        record = ToolRecord(call.id, call.name, call.arguments, n, started=time.time())
        if self.cancel.is_set():
            record.verdict = Verdict(False, "rejected", "the user stopped the loop")
            return _refused(record, "not run: the user stopped the loop")
        tool = self.tools.get(call.name)
        if tool is None:
            return _failed(record, f"unknown tool {call.name!r}; the tools are: {', '.join(self.tools)}")
        try:
            prepared = tool.prepare(call.arguments, self.ctx)
        except (ToolError, PathRefused) as exc:
            return _failed(record, str(exc))
        record.kind, record.title = prepared.kind.value, prepared.title
        request = ApprovalRequest(call.id, call.name, prepared.kind, prepared.title, prepared.preview,
                                  call.arguments, self.cancel)  # fmt: skip
        record.verdict = self.policy.check(request)
        if not record.verdict.allowed:
            return _refused(record, f"refused: {record.verdict.reason}")
        began = time.monotonic()
        try:
            output = prepared.run()
        except (ToolError, PathRefused) as exc:
            return _failed(record, str(exc), time.monotonic() - began)
        except Exception as exc:  # a tool bug is reported to the model and recorded, not raised
            return _failed(record, f"{type(exc).__name__}: {exc}", time.monotonic() - began)
        record.seconds = time.monotonic() - began
        record.ok, record.summary = output.ok, output.summary
        record.result, record.data = output.text, output.data
        if not output.ok:
            record.error = output.summary
        return record


def _failed(record: ToolRecord, error: str, seconds: float = 0.0) -> ToolRecord:
    record.ok, record.error, record.summary, record.seconds = False, error, "error", seconds
    record.result = f"error: {error}"
    return record


def _refused(record: ToolRecord, text: str) -> ToolRecord:
    record.ok, record.error, record.summary, record.result = False, text, "refused", text
    return record


def run_loop(step: Step, messages: Sequence[dict[str, Any]], tools: Sequence[Tool], policy: Policy,
             ctx: ToolContext, dialect: str, max_turns: int = 8) -> Iterator[LoopEvent]:  # fmt: skip
    """Events of one agent turn; the last is the LoopResult. Cancel with `ctx.cancel.set()`."""
    return AgentLoop(step, tools, policy, ctx, dialect, max_turns).run(messages)
