"""What a turn reports, in order: queued, model_loading, session, retrieval, cache, prefill...,
delta..., result.

Each event has `type` and `session_id` (None while the session does not exist yet), and `to_dict()` is
its headless `stream-json` line. The final `Result.to_dict()` is also the headless `--output-format json`
object. This module imports only the standard library: a UI imports it without loading redis or numpy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

FinishReason = Literal["stop", "length", "stop_string", "cancelled", "error"]
DeltaKind = Literal["answer", "reasoning"]


@dataclass
class Event:
    type: ClassVar[str] = "event"
    session_id: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **dataclasses.asdict(self)}


@dataclass
class Queued(Event):
    """The turn waits on the engine thread behind `position` other turns (0: it runs next)."""

    type: ClassVar[str] = "queued"
    position: int = 0


@dataclass
class ModelLoading(Event):
    """The model is being loaded (`done` False), then loaded (`done` True). `bytes`: its weight files."""

    type: ClassVar[str] = "model_loading"
    name: str = ""
    bytes: int = 0
    done: bool = False


@dataclass
class SessionStarted(Event):
    """The session exists from here on: which session, model and backend the turn runs on."""

    type: ClassVar[str] = "session"
    model: str = ""
    backend: str = ""
    title: str = ""
    repo: str = ""
    created: bool = False  # a new session (False: resumed)
    messages: int = 0  # messages before this turn
    kv_reuse: bool = True  # False when the session moved to another model or --no-cache
    context_size: int = 0  # the model's context length in tokens
    precision: str = "fp32"  # the engine's arithmetic: fp32 (exact) | int8 (engine/precision.py)
    kv_dtype: str = "float32"  # the KV cache's dtype in memory


@dataclass
class RetrievedChunk:
    path: str
    start_line: int
    end_line: int
    symbol: str | None
    score: float
    tokens: int = 0


@dataclass
class Retrieval(Event):
    """Code spliced into the prompt (empty with `skipped` saying why, when RAG did not run)."""

    type: ClassVar[str] = "retrieval"
    chunks: list[RetrievedChunk] = field(default_factory=list)
    tokens: int = 0  # retrieved tokens spliced into the prompt
    budget: int = 0
    skipped: str | None = None


@dataclass
class IndexProgress(Event):
    """A RAG turn refreshing the repository's index first (indexer.progress.Progress, throttled)."""

    type: ClassVar[str] = "index_progress"
    phase: str = ""  # waiting | reading | embedding | done
    files_done: int = 0
    files_total: int = 0
    chunks_done: int = 0
    chunks_total: int = 0
    elapsed_s: float = 0.0
    rate: float = 0.0
    eta_s: float | None = None
    holder: str | None = None


@dataclass
class Prefill(Event):
    """Prompt tokens computed so far (`done`) of the `total` the cache lacked; the last has done == total."""

    type: ClassVar[str] = "prefill"
    done: int = 0
    total: int = 0


@dataclass
class TextDelta(Event):
    """A piece of the reply (or of its reasoning, with thinking on)."""

    type: ClassVar[str] = "delta"
    text: str = ""
    kind: DeltaKind = "answer"


Delta = TextDelta  # the name before issue 15; engine.Delta is another class (token-level)


@dataclass
class CacheStats(Event):
    """How much of the prompt came from KV blocks, emitted before the first token."""

    type: ClassVar[str] = "cache"
    prompt_tokens: int = 0
    cached_tokens: int = 0
    by_tier: dict[str, int] = field(default_factory=dict)
    prefill_tokens: int = 0  # prompt tokens left to compute
    bytes_read: int = 0
    restore_s: float = 0.0
    enabled: bool = True  # False with --no-cache or when the block store cannot be opened
    dropped_messages: int = 0  # oldest messages left out of the prompt so that it fits the context
    dropped_tokens: int = 0  # the prompt tokens they would have taken
    # Where the prompt stopped extending the session's history, and why (agent.cachebust.CacheBust):
    # token_index, message_index, role, reason, detail, cached_tokens, wasted_tokens; None: it extends it.
    cache_bust: dict[str, Any] | None = None


@dataclass
class Result(Event):
    """The end of a turn, successful or not: everything the headless `json` output holds."""

    type: ClassVar[str] = "result"
    text: str = ""
    reasoning: str = ""
    model: str = ""
    backend: str = ""
    finish_reason: FinishReason | Literal[""] = ""
    tokens: dict[str, int] = field(default_factory=dict)  # prompt, cached, prefilled, generated
    timings: dict[str, float] = field(default_factory=dict)  # ttft_s, prefill_tok_s, decode_tok_s, ...
    cache_by_tier: dict[str, int] = field(default_factory=dict)
    retrieved: list[dict[str, Any]] = field(default_factory=list)  # path, start_line, end_line, symbol, score
    message: int | None = None  # 1-based number of the reply in the session (None: not recorded)
    is_error: bool = False
    error: str | None = None
    exit_code: int = 0  # the kind of failure as the headless CLI's exit code: 0, 1, 2, 3 (130: cancelled)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # agent turns: ToolRecord.to_dict()s
    steps: int = 0  # agent turns: generations in the tool loop (0: a plain turn)


@dataclass
class ToolCall(Event):
    """A tool call parsed from the reply (agent turns, `--allow-tools`); `error`: it is malformed."""

    type: ClassVar[str] = "tool_call"
    call_id: str = ""
    tool: str = ""
    arguments: dict[str, Any] = field(default_factory=dict)
    step: int = 0
    error: str | None = None


@dataclass
class ToolResult(Event):
    """What a tool call did (agent.loop.ToolRecord): approval, outcome, what the model was given."""

    type: ClassVar[str] = "tool_result"
    call_id: str = ""
    tool: str = ""
    step: int = 0
    kind: str | None = None  # read | edit | command | secret
    ok: bool = False
    summary: str = ""
    error: str | None = None
    approval: dict[str, Any] | None = None  # {allowed, by, reason, wait_s}
    seconds: float = 0.0
    result: str = ""  # the text the model was given
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class ApprovalNeeded(Event):
    """A changing tool call waits for the caller's answer (`TurnOptions(ask=True)`): answer it with
    `Turn.answer(call_id, "approve" | "reject" | "always")`; cancelling the turn rejects it. The engine
    thread is free meanwhile (other turns run)."""

    type: ClassVar[str] = "approval"
    call_id: str = ""
    tool: str = ""
    kind: str = ""  # edit | command | secret
    title: str = ""  # one line
    preview: str = ""  # the diff, the command, the path
    arguments: dict[str, Any] = field(default_factory=dict)


TurnEvent = (
    Queued
    | ModelLoading
    | SessionStarted
    | IndexProgress
    | Retrieval
    | CacheStats
    | Prefill
    | TextDelta
    | ToolCall
    | ToolResult
    | ApprovalNeeded
    | Result
)
