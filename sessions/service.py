"""SessionService: the one API the CLI and the TUI call. Neither talks to the engine or Redis itself.

    svc = SessionService()
    turn = svc.start_turn(None, "why does the parser fail?", TurnOptions(model=..., repo="."))
    for event in turn:           # SessionStarted, Retrieval, Delta..., CacheStats, Result
        print(event.to_dict())
    svc.close()

Turns run on one engine thread (models are loaded there once per (name, backend) and kept);
start_turn returns at once. The service holds a lease on every session it runs a turn in (or
opened with `open`) until `close_session` or `close`, so a second process is refused cleanly.
"""

from __future__ import annotations

import logging
import threading
import time
from types import SimpleNamespace
from typing import Any, Literal

import redis

from core.errors import NotFound, UsageError
from core.lease import LEASE_MS, LeaseKeeper
from sessions import export as exporting
from sessions.engine_thread import EngineThread
from sessions.ids import new_id
from sessions.log import history_delta, message_record
from sessions.model import Session, SessionInfo, Settings, title_from_prompt
from sessions.options import TurnOptions, model_name, repo_root
from sessions.retrieval import Retriever
from sessions.runner import TurnJob, run_turn
from sessions.store import SearchHit, SessionStore
from sessions.turn import Turn

log = logging.getLogger("workbench.sessions")


class SessionService:
    def __init__(
        self,
        redis_client: redis.Redis | None = None,
        *,
        load_model: Any = None,
        block_store: Any = None,
        partial_interval_s: float = 0.5,
        lease_ms: int = LEASE_MS,
    ) -> None:
        if redis_client is None:
            from core import redis_server

            redis_client = redis_server.connect()
        self.r = redis_client
        self.store = SessionStore(self.r)
        self.leases = LeaseKeeper(self.r, lease_ms)
        self.partial_interval_s = partial_interval_s
        loader = load_model or (lambda name, backend: _engine_load(name, backend))
        self._engine = EngineThread(loader)
        self._blocks = block_store
        self._blocks_tried = block_store is not None
        self._owns_blocks = False
        self._blocks_lock = threading.Lock()
        self._retriever = Retriever()

    # -- turns -------------------------------------------------------------------------------------

    def start_turn(self, session_id: str | None, prompt: str, options: TurnOptions | None = None) -> Turn:
        """Queue a turn and return its handle at once.

        `session_id` (an id or unique prefix) resumes that session; None starts a new one from
        `options` (model, repo, title, settings), stored only once its model has loaded. Raises
        UsageError (empty prompt, bad option), NotFound / AmbiguousId, or SessionBusy right away;
        anything later (a model that does not load, an engine failure) ends the turn with a Result
        whose `is_error` is true.
        """
        options = options or TurnOptions()
        if not prompt.strip():
            raise UsageError("empty prompt: give the assistant something to answer")
        options.apply(Settings())  # validates the values before anything runs
        if session_id is not None:
            sid = self.store.resolve(session_id)
            session: Session | None = None
        else:
            sid = new_id()
            now = time.time()
            session = Session(
                id=sid,
                title=options.title or title_from_prompt(prompt),
                created=now,
                updated=now,
                repo=repo_root(options.repo),
                model=model_name(options.model or _default_model()),
            )
        if session is None:
            self.leases.acquire(sid)  # a new session takes its lease when it is stored
        turn = Turn(sid)
        job = TurnJob(
            turn=turn,
            session=session,
            is_new=session is not None,
            prompt=prompt,
            options=options,
            store=self.store,
            load_model=self._engine.model,
            blocks=self.blocks,
            retriever=self._retriever,
            lease=self.leases.acquire,
            partial_interval_s=self.partial_interval_s,
        )
        self._engine.submit(lambda: run_turn(job))
        return turn

    def blocks(self) -> Any:
        """The KV block store (memory, disk, Redis), opened on first use; None if it cannot be."""
        with self._blocks_lock:
            if not self._blocks_tried:
                self._blocks_tried = True
                try:
                    from sessions.kv_redis import open_block_store

                    self._blocks = open_block_store(self.r)
                    self._owns_blocks = True
                except Exception as exc:
                    log.warning("KV block store unavailable (%s); turns will recompute their prompts", exc)
            return self._blocks

    # -- sessions ----------------------------------------------------------------------------------

    def create(
        self,
        repo: str | None = None,
        model: str | None = None,
        settings: Settings | None = None,
        title: str = "",
    ) -> Session:
        """A new, empty session (the TUI's "new"); its title comes from the first prompt unless given."""
        name = model_name(model or _default_model())
        _check_model_exists(name)
        now = time.time()
        session = Session(
            id=new_id(),
            title=title,
            created=now,
            updated=now,
            repo=repo_root(repo),
            model=name,
            settings=settings or Settings(),
        )
        self.store.create(session)
        return session

    def resolve(self, id_or_prefix: str) -> str:
        return self.store.resolve(id_or_prefix)

    def list(self, repo: str | None = None, limit: int | None = None) -> list[SessionInfo]:
        """Newest first; `repo` (a path inside a repository) keeps only that repository's sessions."""
        return self.store.list(repo_root(repo) if repo else None, limit)

    def latest(self, repo: str | None = None) -> SessionInfo | None:
        """The most recently updated session of the repository at `repo` (default: here): --continue."""
        return self.store.latest(repo_root(repo))

    def search(self, query: str, repo: str | None = None, limit: int = 20) -> list[SearchHit]:
        if not query.strip():
            raise UsageError("empty search: give one or more words")
        return self.store.search(query, repo_root(repo) if repo else None, limit)

    def show(self, id_or_prefix: str) -> Session:
        return self.store.load(self.resolve(id_or_prefix))

    def rename(self, id_or_prefix: str, title: str) -> Session:
        title = " ".join(title.split())
        if not title:
            raise UsageError("empty title")
        session = self.show(id_or_prefix)
        self.store.update_meta(session, title=title)
        return session

    def fork(self, id_or_prefix: str, at: int | None = None, title: str | None = None) -> Session:
        """A new session with the first `at` messages (default: all); it shares the parent's KV blocks."""
        parent_id = self.resolve(id_or_prefix)
        parent = self.store.load(parent_id)
        at = len(parent.messages) if at is None else at
        if not 0 <= at <= len(parent.messages):
            raise UsageError(
                f"cannot fork session {parent_id} at message {at}: it has {len(parent.messages)}"
            )
        snap = self.store.load(parent_id, stop_after=at)
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
            records[-1]["history"] = history_delta(
                [], snap.history, snap.history_fingerprint, snap.history_dtype
            )
        self.store.create(child, records)
        child.messages, child.message_count = snap.messages, len(snap.messages)
        child.history, child.history_fingerprint = snap.history, snap.history_fingerprint
        child.history_dtype = snap.history_dtype
        self._pin_fork(child)
        return child

    def _pin_fork(self, child: Session) -> None:
        """Pin the blocks of the fork's history: the parent saved them when it had that history."""
        blocks = self.blocks()
        if blocks is None or not child.history:
            return
        from engine.errors import EngineError
        from engine.loader import resolve_path

        try:
            path = resolve_path(child.model)
        except EngineError as exc:
            log.warning(
                "fork %s: its KV blocks are not pinned, model %r is unavailable (%s)",
                child.id,
                child.model,
                exc,
            )
            return
        # Block keys depend on the model's fingerprint, KV dtype and weights (read from `path`), not on
        # a loaded network: a stand-in with those attributes names the same keys.
        stand_in = SimpleNamespace(
            fingerprint=child.history_fingerprint, kv_dtype=child.history_dtype, path=path, name=child.model
        )
        blocks.pin(child.id, stand_in, child.history)

    def delete(self, id_or_prefix: str) -> str:
        """Remove a session and unpin its KV blocks (blocks other sessions share stay pinned by them)."""
        session_id = self.resolve(id_or_prefix)
        self.leases.acquire(session_id)  # refuses while another process uses it
        try:
            self.store.delete(session_id)
            blocks = self.blocks()
            if blocks is not None:
                blocks.unpin(session_id)
        finally:
            self.leases.release(session_id)
        return session_id

    def export(self, id_or_prefix: str, fmt: Literal["markdown", "json"] = "markdown") -> str:
        session = self.show(id_or_prefix)
        if fmt == "markdown":
            return exporting.to_markdown(session)
        if fmt == "json":
            return exporting.to_json(session)
        raise UsageError(f"unknown export format {fmt!r} (markdown or json)")

    def open(self, id_or_prefix: str) -> Session:
        """Take the session's lease for as long as it is open here (the TUI), and load it."""
        session_id = self.resolve(id_or_prefix)
        self.leases.acquire(session_id)
        return self.store.load(session_id)

    def close_session(self, session_id: str) -> None:
        self.leases.release(session_id)

    def close(self) -> None:
        """Finish queued turns, write pending KV blocks, release every lease."""
        self._engine.close()
        if self._blocks is not None:
            try:
                self._blocks.close() if self._owns_blocks else self._blocks.flush()
            except Exception as exc:
                log.warning("KV blocks not written (%s)", exc)
        self.leases.close()

    def __enter__(self) -> SessionService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _engine_load(name: str, backend: str | None) -> Any:
    import engine

    return engine.load_model(name, backend=backend)


def _default_model() -> str:
    import engine

    return engine.DEFAULT_MODEL


def _check_model_exists(name: str) -> None:
    from engine.errors import EngineError
    from engine.loader import resolve_path

    try:
        resolve_path(name)
    except EngineError as exc:
        raise NotFound(f"model {name!r} not found: {exc}") from None
