"""A fork: a new session with the first messages of another, sharing the parent's KV blocks."""

from __future__ import annotations

import logging
import time
from typing import Any

from core.errors import UsageError
from sessions.ids import new_id
from sessions.log import history_delta, message_record
from sessions.model import Session
from sessions.store import SessionStore

log = logging.getLogger("workbench.sessions")


def fork(store: SessionStore, parent_id: str, at: int | None, title: str | None) -> Session:
    """Store and return the fork of `parent_id` at message `at` (default: all of them)."""
    parent = store.load(parent_id)
    at = len(parent.messages) if at is None else at
    if not 0 <= at <= len(parent.messages):
        raise UsageError(f"cannot fork session {parent_id} at message {at}: it has {len(parent.messages)}")
    snap = store.load(parent_id, stop_after=at)
    now = time.time()
    child = Session(
        id=new_id(),
        title=title or f"{parent.title} (fork)",
        created=now,
        updated=now,
        repo=parent.repo,
        model=parent.model,
        fingerprint=parent.fingerprint,
        backend=parent.backend,
        settings=parent.settings,
        parent_id=parent_id,
        fork_at=at,
    )
    records = [message_record(i, m) for i, m in enumerate(snap.messages)]
    if records and snap.history:
        records[-1]["history"] = history_delta([], snap.history, snap.history_fingerprint, snap.history_dtype)
    store.create(child, records)
    child.messages, child.message_count = snap.messages, len(snap.messages)
    child.history, child.history_fingerprint = snap.history, snap.history_fingerprint
    child.history_dtype = snap.history_dtype
    return child


def pin_fork(blocks: Any, child: Session) -> None:
    """Pin the blocks of the fork's history: the parent saved them when it had that history."""
    if blocks is None or not child.history:
        return
    from engine.errors import EngineError
    from engine.loader import model_args, resolve_path
    from kvstore import BlockSpace, weights_identity

    try:
        path = resolve_path(child.model)
        args = model_args(path)
    except EngineError as exc:
        log.warning("fork %s: its KV blocks are not pinned, model %r is unavailable (%s)", child.id,
                    child.model, exc)  # fmt: skip
        return
    # Block keys depend on the model's fingerprint, KV dtype and weights (read from `path`), not on a
    # loaded network: the session recorded the first two with its history.
    identity = weights_identity(child.history_fingerprint, path)
    space = BlockSpace(identity, child.history_dtype, args.num_hidden_layers, args.num_key_value_heads,
                       args.head_dim)  # fmt: skip
    blocks.pin(child.id, space, child.history)
