"""What a turn reports, in order: session, retrieval, delta..., cache, result.

Each event has `type` and `session_id`, and `to_dict()` is its headless `stream-json` line. The final
`Result.to_dict()` is also the headless `--output-format json` object.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass
class Event:
    type: ClassVar[str] = "event"
    session_id: str

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **dataclasses.asdict(self)}


@dataclass
class SessionStarted(Event):
    """First event of every turn: which session, model and backend it runs on."""

    type: ClassVar[str] = "session"
    model: str = ""
    backend: str = ""
    title: str = ""
    repo: str = ""
    created: bool = False  # a new session (False: resumed)
    messages: int = 0  # messages before this turn
    kv_reuse: bool = True  # False when the session moved to another model or --no-cache


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
class Delta(Event):
    type: ClassVar[str] = "delta"
    text: str = ""
    kind: str = "answer"  # "answer" | "reasoning"


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


@dataclass
class Result(Event):
    """The end of a turn, successful or not: everything the headless `json` output holds."""

    type: ClassVar[str] = "result"
    text: str = ""
    reasoning: str = ""
    model: str = ""
    backend: str = ""
    finish_reason: str = ""  # stop | length | stop_string | cancelled | error
    tokens: dict[str, int] = field(default_factory=dict)  # prompt, cached, prefilled, generated
    timings: dict[str, float] = field(default_factory=dict)  # ttft_s, prefill_tok_s, decode_tok_s, ...
    cache_by_tier: dict[str, int] = field(default_factory=dict)
    retrieved: list[dict[str, Any]] = field(default_factory=list)  # path, start_line, end_line, symbol, score
    message: int | None = None  # 1-based number of the reply in the session (None: not recorded)
    is_error: bool = False
    error: str | None = None
    exit_code: int = 0  # what a CLI should exit with: 0, 1, 2, 3 or 130 (cancelled)


TurnEvent = SessionStarted | Retrieval | Delta | CacheStats | Result
