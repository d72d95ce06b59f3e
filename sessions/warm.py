"""The live KV cache of the session used last, kept in this process for its next turn.

Why: a turn ends with its cache holding exactly the session's saved history (sessions/recording.py),
and the next turn's prompt extends that history. Rebuilding the cache from blocks copies every byte
of it again (hundreds of MB to GB, bounded by first touches of fresh memory on these VMs); keeping it
costs nothing until another session needs the memory. So the service keeps one: the cache of the
session that ran or was opened last, within a byte budget, and the next turn of that session prefills
only what is new. Opening a session (`SessionService.warm`, the TUI's --resume) restores its blocks
into this slot ahead of the first prompt, so the restore happens while the user types.

Everything here runs on the engine thread, which owns the caches; the lock only guards hand-overs.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

DEFAULT_BUDGET_MB = 4096
LIVE_TIER = "live"  # the name cache reports give tokens taken from the kept cache
_SOURCES = {LIVE_TIER: "this process's cache", "memory": "memory", "disk": "disk", "redis": "Redis"}


def _budget_bytes() -> int:
    raw = os.environ.get("WORKBENCH_KV_LIVE_MB", "")
    try:
        return int(raw) * 2**20 if raw else DEFAULT_BUDGET_MB * 2**20
    except ValueError:
        raise ValueError(f"WORKBENCH_KV_LIVE_MB={raw!r} is not a whole number of megabytes") from None


@dataclass
class WarmReport:
    """What opening a session restored ahead of its next turn."""

    session_id: str
    tokens: int = 0  # positions now in the live cache
    history_tokens: int = 0  # the session's saved history (what could have been restored)
    by_tier: dict[str, int] = field(default_factory=dict)  # tokens taken from each tier
    bytes_read: int = 0
    seconds: float = 0.0
    skipped: str = ""  # why nothing was restored (no history, another model, the cache off, ...)
    context_size: int = 0  # the model's context length in tokens

    def describe(self) -> str:
        """'restored 3,840 tokens from disk in 0.4 s' (the TUI's line on open)."""
        if self.skipped:
            return f"nothing restored: {self.skipped}"
        tiers = sorted(self.by_tier, key=lambda t: -self.by_tier[t])
        source = " and ".join(_SOURCES.get(t, t) for t in tiers) or "memory"
        text = f"restored {self.tokens:,} tokens from {source} in {self.seconds:.1f} s"
        if self.tokens < self.history_tokens:
            text += f" ({self.history_tokens - self.tokens:,} will be recomputed)"
        return text


@dataclass
class _Live:
    session_id: str
    fingerprint: str
    token_ids: list[int]
    cache: Any


class LiveCache:
    """One session's cache, handed to its next turn when that turn's prompt extends what it holds."""

    def __init__(self, budget_bytes: int | None = None) -> None:
        self.budget_bytes = _budget_bytes() if budget_bytes is None else budget_bytes
        self._live: _Live | None = None
        self._lock = threading.Lock()

    def keep(self, session_id: str, fingerprint: str, token_ids: list[int], cache: Any) -> bool:
        """Keep `cache` (holding exactly `token_ids`) for the session's next turn; False when over budget."""
        if cache is None or cache.offset != len(token_ids) or not token_ids:
            self.drop()
            return False
        if cache.nbytes() > self.budget_bytes:
            self.drop()  # what it held is in the block store; only the in-process copy is lost
            return False
        with self._lock:
            self._live = _Live(session_id, fingerprint, list(token_ids), cache)
        return True

    def take(self, session_id: str, fingerprint: str, prompt_ids: list[int]) -> Any | None:
        """The kept cache trimmed to the prompt's common prefix (at least one token left to prefill, so
        the turn has logits to sample from), or None. The slot is emptied: a cache has one owner."""
        with self._lock:
            live, self._live = self._live, None
        if live is None or live.session_id != session_id or live.fingerprint != fingerprint:
            return None
        common = _common_prefix(live.token_ids, prompt_ids)
        common = min(common, len(prompt_ids) - 1)
        if common <= 0:
            return None
        if common < live.cache.offset:
            live.cache.trim(common)
        return live.cache

    def holds(self, session_id: str) -> int:
        """Tokens kept for `session_id` (0 if another session's cache, or none, is kept)."""
        with self._lock:
            live = self._live
        return len(live.token_ids) if live is not None and live.session_id == session_id else 0

    def drop(self, session_id: str | None = None) -> None:
        """Forget the kept cache (only if it is `session_id`'s, when given): its memory goes back."""
        with self._lock:
            if self._live is not None and session_id in (None, self._live.session_id):
                self._live = None


def _common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def warm_session(live: LiveCache, session: Any, model: Any, blocks: Any) -> WarmReport:
    """On the engine thread: restore the session's saved history from the block store into a cache
    kept in `live`, so its next turn starts from there."""
    from kvstore import space_of

    history = list(session.history or [])
    report = WarmReport(session.id, history_tokens=len(history), context_size=model.context_length)
    if not history:
        report.skipped = "the session has no saved history yet"
    elif session.history_fingerprint not in ("", model.fingerprint):
        report.skipped = "its history was computed by another model"
    elif blocks is None:
        report.skipped = "the KV block store is not available"
    elif live.holds(session.id) == len(history):
        report.tokens, report.by_tier = len(history), {LIVE_TIER: len(history)}
        return report
    if report.skipped:
        return report
    t0 = time.perf_counter()
    cache = model.make_cache()
    blocks.flush()  # the session's last blocks may still be in the writer's queue
    restored = blocks.restore(space_of(model), cache, history, len(history))
    report.tokens, report.by_tier = restored.cached_tokens, dict(restored.by_tier)
    report.bytes_read, report.seconds = restored.bytes_read, time.perf_counter() - t0
    if not restored.cached_tokens:
        report.skipped = "none of its KV blocks are stored (they were evicted or never written)"
        return report
    if not live.keep(session.id, model.fingerprint, history[: restored.cached_tokens], cache):
        report.skipped = (
            f"its cache ({cache.nbytes() / 2**20:,.0f} MB) is over the live-cache budget "
            f"(WORKBENCH_KV_LIVE_MB={live.budget_bytes // 2**20}); its next turn restores from blocks"
        )
    return report
