"""What a session is: plain dataclasses with dict round trips. Persistence lives in store.py."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]
Status = Literal["complete", "interrupted"]

TITLE_CHARS = 72


@dataclass
class Sampling:
    """Sampling settings as engine.SamplingParams takes them (max_tokens included)."""

    temperature: float = 0.7
    top_k: int = 20
    top_p: float = 0.8
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    max_tokens: int = 1024

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sampling:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class Settings:
    """Per-session settings; sticky: a turn that changes one records the change."""

    sampling: Sampling = field(default_factory=Sampling)
    rag: bool = True
    system_prompt: str | None = None
    thinking: bool = False
    rag_k: int = 8
    rag_budget: int = 1536  # most tokens of retrieved code spliced into one user message

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        names = {f.name for f in dataclasses.fields(cls)} - {"sampling"}
        return cls(
            sampling=Sampling.from_dict(data.get("sampling") or {}),
            **{k: v for k, v in data.items() if k in names},
        )


@dataclass
class Message:
    """One message. `context` holds the retrieved chunks spliced before a user prompt, so that
    re-rendering the history gives the model exactly the tokens it saw (and hits the KV cache)."""

    role: Role
    content: str
    created: float = field(default_factory=time.time)
    reasoning: str = ""
    status: Status = "complete"
    context: list[dict[str, Any]] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    tool_results: list[dict[str, Any]] = field(default_factory=list)
    model: str | None = None
    finish_reason: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        # Leave out empty optional fields: the log stays readable and small.
        full = dataclasses.asdict(self)
        keep = {"role", "content", "created", "status"}
        return {k: v for k, v in full.items() if k in keep or v not in (None, "", [], {})}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Message:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class SessionInfo:
    """What listing and search show: everything but the messages and token history."""

    id: str
    title: str
    created: float
    updated: float
    repo: str
    model: str
    fingerprint: str = ""
    backend: str | None = None
    settings: Settings = field(default_factory=Settings)
    parent_id: str | None = None
    fork_at: int | None = None
    message_count: int = 0

    def info_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(SessionInfo)}
        data["settings"] = self.settings.to_dict()
        return data

    @classmethod
    def from_info_dict(cls, data: dict[str, Any]) -> SessionInfo:
        names = {f.name for f in dataclasses.fields(SessionInfo)} - {"settings"}
        return SessionInfo(
            settings=Settings.from_dict(data.get("settings") or {}),
            **{k: v for k, v in data.items() if k in names},
        )


@dataclass
class Session(SessionInfo):
    """A whole session: its messages and the token ids its KV blocks were saved under."""

    messages: list[Message] = field(default_factory=list)
    history: list[int] = field(default_factory=list)  # token ids held by the KV cache after the last turn
    history_fingerprint: str = ""  # the model fingerprint `history` belongs to
    history_dtype: str = ""  # the KV dtype its blocks were stored in
    open_reply: int | None = None  # index of a last reply known only from partial records (a crash)

    def to_dict(self) -> dict[str, Any]:
        data = self.info_dict()
        data["message_count"] = len(self.messages)
        data["messages"] = [m.to_dict() for m in self.messages]
        return data


def title_from_prompt(prompt: str) -> str:
    """The first line of the first prompt, shortened at a word boundary."""
    line = next((ln.strip() for ln in prompt.splitlines() if ln.strip()), "")
    if len(line) <= TITLE_CHARS:
        return line or "(untitled)"
    cut = line[: TITLE_CHARS - 1]
    if " " in cut[TITLE_CHARS // 2 :]:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip() + "…"
