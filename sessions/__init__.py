"""Sessions: durable conversations and the service the CLI and TUI run turns through."""

from core.lease import SessionBusy
from sessions.events import CacheStats, Delta, Result, Retrieval, RetrievedChunk, SessionStarted
from sessions.ids import AmbiguousId
from sessions.model import Message, Sampling, Session, SessionInfo, Settings
from sessions.options import TurnOptions, repo_root
from sessions.service import SessionService
from sessions.store import SearchHit
from sessions.turn import Turn

__all__ = [
    "AmbiguousId",
    "CacheStats",
    "Delta",
    "Message",
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
    "Turn",
    "TurnOptions",
    "repo_root",
]
