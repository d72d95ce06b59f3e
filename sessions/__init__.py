"""Sessions: durable conversations and the service the CLI and TUI run turns through.

Names are imported on first use (PEP 562), so `import sessions.events` (the types a UI needs) loads
neither redis nor numpy nor the engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.lease import SessionBusy
    from sessions.events import (
        CacheStats,
        Delta,
        ModelLoading,
        Prefill,
        Queued,
        Result,
        Retrieval,
        RetrievedChunk,
        SessionStarted,
        TextDelta,
    )
    from sessions.ids import AmbiguousId
    from sessions.model import Message, Sampling, Session, SessionInfo, Settings
    from sessions.options import TurnOptions, repo_root
    from sessions.service import SessionService
    from sessions.store import SearchHit
    from sessions.turn import Turn

_EVENTS = ("CacheStats", "Delta", "ModelLoading", "Prefill", "Queued", "Result", "Retrieval",
           "RetrievedChunk", "SessionStarted", "TextDelta")  # fmt: skip
_WHERE = {
    "SessionBusy": "core.lease",
    "AmbiguousId": "sessions.ids",
    "SearchHit": "sessions.store",
    "SessionService": "sessions.service",
    "Turn": "sessions.turn",
    "TurnOptions": "sessions.options",
    "repo_root": "sessions.options",
    **dict.fromkeys(_EVENTS, "sessions.events"),
    **dict.fromkeys(("Message", "Sampling", "Session", "SessionInfo", "Settings"), "sessions.model"),
}

__all__ = [
    "AmbiguousId",
    "CacheStats",
    "Delta",
    "Message",
    "ModelLoading",
    "Prefill",
    "Queued",
    "Result",
    "Retrieval",
    "RetrievedChunk",
    "Sampling",
    "SearchHit",
    "Session",
    "SessionBusy",
    "SessionInfo",
    "SessionService",
    "SessionStarted",
    "Settings",
    "TextDelta",
    "Turn",
    "TurnOptions",
    "repo_root",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'sessions' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
