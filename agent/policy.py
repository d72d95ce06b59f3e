"""Who decides whether a tool call runs: the allow level, grants made earlier in the session, the user.

Read-only calls run automatically at the default level; changing calls (and secret reads) need approval.
Headless there is no approver, so the level alone decides and anything else is refused; the TUI passes an
approver that shows a modal (docs/architecture.md, "Agent tools"). A refusal is an answer, not an error:
the loop hands it to the model as the call's result and records it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from agent.tools.base import Kind
from core.errors import UsageError

__all__ = ["AllowLevel", "ApprovalRequest", "Approver", "Decision", "Kind", "Policy", "Verdict"]


class AllowLevel(StrEnum):
    NONE = "none"  # no tools offered at all
    READ = "read"
    EDIT = "edit"
    ALL = "all"

    @classmethod
    def parse(cls, value: str) -> AllowLevel:
        try:
            return cls(value.strip().lower())
        except ValueError:
            raise UsageError(f"--allow-tools must be one of none, read, edit, all (got {value!r})") from None


# What runs without asking, per level.
AUTO: dict[AllowLevel, frozenset[Kind]] = {
    AllowLevel.NONE: frozenset(),
    AllowLevel.READ: frozenset({Kind.READ}),
    AllowLevel.EDIT: frozenset({Kind.READ, Kind.EDIT}),
    AllowLevel.ALL: frozenset(Kind),
}


class Decision(StrEnum):
    APPROVE = "approve"  # this call
    REJECT = "reject"
    ALWAYS = "always"  # this call and every later call of this tool and kind, for the session


@dataclass(frozen=True)
class ApprovalRequest:
    call_id: str
    tool: str
    kind: Kind
    title: str  # one line
    preview: str  # the diff, the command, the path
    arguments: Mapping[str, Any]
    cancel: threading.Event = field(default_factory=threading.Event)  # set: the user stopped the loop


Approver = Callable[[ApprovalRequest], Decision]


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    by: str  # auto | session | user | always | refused | rejected
    reason: str = ""  # what the model is told when not allowed
    wait_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        wait = round(self.wait_s, 3)
        return {"allowed": self.allowed, "by": self.by, "reason": self.reason, "wait_s": wait}


class Policy:
    """One per session: the level, the approver (None headless) and the session's "always" grants."""

    def __init__(self, level: AllowLevel | str = AllowLevel.READ, approver: Approver | None = None) -> None:
        self.level = level if isinstance(level, AllowLevel) else AllowLevel.parse(level)
        self.approver = approver
        self.grants: set[tuple[str, Kind]] = set()
        self._lock = threading.Lock()

    def with_approver(self, approver: Approver | None) -> Policy:
        """This policy asking `approver` instead, sharing its level and "always" grants (a turn's own
        approver on the session's policy)."""
        other = Policy(self.level, approver)
        other.grants, other._lock = self.grants, self._lock
        return other

    @property
    def offers_tools(self) -> bool:
        return self.level is not AllowLevel.NONE

    def check(self, request: ApprovalRequest) -> Verdict:
        if not self.offers_tools:
            return Verdict(False, "refused", "tools are disabled in this session (--allow-tools none)")
        if request.kind in AUTO[self.level]:
            return Verdict(True, "auto")
        key = (request.tool, request.kind)
        with self._lock:
            if key in self.grants:
                return Verdict(True, "session")
        if self.approver is None:
            return Verdict(False, "refused", _refusal(self.level, request.kind))
        if request.cancel.is_set():
            return Verdict(False, "rejected", "the user stopped the loop")
        return self._ask(request, key)

    def _ask(self, request: ApprovalRequest, key: tuple[str, Kind]) -> Verdict:
        assert self.approver is not None
        started = time.monotonic()
        try:
            decision = Decision(self.approver(request))
        except Exception as exc:  # a broken approver must not run the call, nor crash the loop
            return Verdict(False, "rejected", f"approval failed ({type(exc).__name__}: {exc})",
                           time.monotonic() - started)  # fmt: skip
        wait = time.monotonic() - started
        if request.cancel.is_set():
            return Verdict(False, "rejected", "the user stopped the loop", wait)
        if decision is Decision.REJECT:
            return Verdict(False, "rejected", "the user rejected this call", wait)
        if decision is Decision.ALWAYS:
            with self._lock:
                self.grants.add(key)
            return Verdict(True, "always", "", wait)
        return Verdict(True, "user", "", wait)


def _refusal(level: AllowLevel, kind: Kind) -> str:
    needed = {Kind.READ: "read", Kind.EDIT: "edit", Kind.COMMAND: "all", Kind.SECRET: "all"}[kind]
    what = {Kind.READ: "reading", Kind.EDIT: "changing files", Kind.COMMAND: "running commands",
            Kind.SECRET: "reading secrets files"}[kind]  # fmt: skip
    return f"{what} is not allowed in this session (--allow-tools {level.value}; it needs {needed})"
