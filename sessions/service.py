"""SessionService: the one API the CLI and the TUI call. Neither talks to the engine or Redis itself.

    svc = SessionService()
    turn = svc.start_turn(None, "why does the parser fail?", TurnOptions(model=..., repo="."))
    for event in turn:           # SessionStarted, Retrieval, Delta..., CacheStats, Result
        print(event.to_dict())
    svc.close()

Nothing here blocks an event loop: the constructor and start_turn return at once, and whatever is
slow (connecting or starting Redis, rebuilding the store from disk, resolving an id, importing the
engine) runs on the service's worker thread; pinning KV blocks after fork/delete (opening the block
store, hashing weights) runs on a second one. Turns run on one engine thread (models are loaded once
per (name, backend) and kept). The service holds a lease on every session it runs a turn in (or
opened with `open`) until `close_session` or `close`, so a second process is refused cleanly.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import redis

from core.errors import UsageError
from core.lease import LEASE_MS, LeaseKeeper
from sessions import forking
from sessions.engine_thread import EngineThread
from sessions.events import Result
from sessions.ids import new_id
from sessions.model import Session, Settings, title_from_prompt
from sessions.options import (
    TurnOptions,
    check_model_exists,
    default_model,
    engine_load,
    model_name,
    repo_root,
)
from sessions.reads import SessionReads
from sessions.retrieval import Retriever
from sessions.runner import TurnJob, run_turn
from sessions.store import SessionStore
from sessions.turn import Turn
from sessions.turn_queue import TurnQueue, cancelled
from sessions.warm import LiveCache, WarmReport, warm_session
from sessions.workers import Workers

log = logging.getLogger("workbench.sessions")

T = TypeVar("T")
READY_POLL_S = 0.05  # how often a turn waiting for start-up notices a cancel


class SessionService(SessionReads):
    def __init__(
        self,
        redis_client: redis.Redis | None = None,
        *,
        load_model: Any = None,
        block_store: Any = None,
        partial_interval_s: float = 0.5,
        lease_ms: int = LEASE_MS,
    ) -> None:
        self.partial_interval_s = partial_interval_s
        loader = load_model or engine_load
        self._engine = EngineThread(loader)
        self._blocks = block_store
        self._blocks_tried = block_store is not None
        self._owns_blocks = False
        self._blocks_lock = threading.Lock()
        self._retriever = Retriever()
        self._queue = TurnQueue(self._engine)
        self._live = LiveCache()  # the last session's KV cache, for its next turn (sessions/warm.py)
        self._r: redis.Redis | None = None
        self._store: SessionStore | None = None
        self._leases: LeaseKeeper | None = None
        self._workers = Workers(lambda: self._start(redis_client, lease_ms))
        self._started = self._workers.started

    def _start(self, redis_client: redis.Redis | None, lease_ms: int) -> None:
        if redis_client is None:
            from core import redis_server

            redis_client = redis_server.connect()  # may start the embedded server: seconds
        self._r = redis_client
        self._store = SessionStore(redis_client)  # rebuilds from disk what Redis lacks
        self._leases = LeaseKeeper(redis_client, lease_ms)

    # -- start-up ----------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Start-up has finished (successfully or not: wait_ready() raises its error)."""
        return self._started.done()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until Redis is connected and the store rebuilt; re-raises a start-up failure."""
        self._started.result(timeout)

    async def ready_async(self) -> None:
        await asyncio.wrap_future(self._started)

    async def call_async(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking call of this service (list, search, show, ...) on its worker: for an event loop."""
        return await self._workers.call_async(fn, *args, **kwargs)

    @property
    def r(self) -> redis.Redis:
        self.wait_ready()
        assert self._r is not None
        return self._r

    @property
    def store(self) -> SessionStore:
        self.wait_ready()
        assert self._store is not None
        return self._store

    @property
    def leases(self) -> LeaseKeeper:
        self.wait_ready()
        assert self._leases is not None
        return self._leases

    # -- turns -------------------------------------------------------------------------------------

    def start_turn(self, session_id: str | None, prompt: str, options: TurnOptions | None = None) -> Turn:
        """Queue a turn and return its handle at once (no Redis, disk or engine work on this thread).

        `session_id` (an id or unique prefix) resumes that session; None starts a new one from
        `options` (model, repo, title, settings), stored only once its model has loaded and the prompt
        fits. Raises only UsageError (empty prompt, bad option value). Anything later (an unknown or
        ambiguous id, a session in use elsewhere, a model that does not load) ends the turn with a
        Result whose `is_error` is true and whose `exit_code` says what kind of failure it was.
        """
        options = options or TurnOptions()
        if not prompt.strip():
            raise UsageError("empty prompt: give the assistant something to answer")
        options.apply(Settings())  # validates the values before anything runs
        turn = Turn()
        self._queue.add(turn)
        self._workers.submit(self._admit, turn, session_id, prompt, options)
        return turn

    def _admit(self, turn: Turn, session_ref: str | None, prompt: str, options: TurnOptions) -> None:
        """On the worker: resolve the session, take its lease, then queue the turn on the engine thread."""
        try:
            while not self._started.done():
                if turn.cancel_event.wait(READY_POLL_S):
                    break
            if turn.cancelled:
                return self._queue.end(turn, cancelled(turn))
            self.wait_ready()
            session, is_new = self._session_for(turn, session_ref, prompt, options)
        except Exception as exc:
            code = getattr(exc, "exit_code", 1)
            message = str(exc) if hasattr(exc, "exit_code") else f"{type(exc).__name__}: {exc}"
            failed = Result(turn.session_id, finish_reason="error", is_error=True, error=message)
            failed.exit_code = code
            return self._queue.end(turn, failed)
        job = TurnJob(
            turn=turn,
            session=session,
            is_new=is_new,
            prompt=prompt,
            options=options,
            store=self.store,
            load_model=self._engine.model,
            is_loaded=self._engine.loaded,
            blocks=self.blocks,
            retriever=self._retriever,
            lease=self.leases.acquire,
            partial_interval_s=self.partial_interval_s,
            live=self._live,
            on_engine=self._engine.call,
        )
        self._queue.enqueue(turn, lambda: run_turn(job))

    def warm(self, id_or_prefix: str, model: str | None = None, backend: str | None = None) -> Future:
        """Load the session's model and restore its saved KV history into this process's live cache, on
        the engine thread after the turns queued before; its next turn then prefills only what is new.
        The future's WarmReport says what was restored from which tier and how long it took."""

        def run() -> WarmReport:
            session = self.store.load(self.resolve(id_or_prefix))
            loaded = self._engine.model(model_name(model) if model else session.model, backend)
            return warm_session(self._live, session, loaded, self.blocks())

        return self._engine.call(run)

    def _session_for(
        self, turn: Turn, session_ref: str | None, prompt: str, options: TurnOptions
    ) -> tuple[Session, bool]:
        if session_ref is not None:
            sid = self.store.resolve(session_ref)
            turn.session_id = sid
            self.leases.acquire(sid)  # a new session takes its lease when it is stored
            return Session(id=sid, title="", created=0.0, updated=0.0, repo="", model=""), False
        now = time.time()
        session = Session(
            id=new_id(),
            title=options.title or title_from_prompt(prompt),
            created=now,
            updated=now,
            repo=repo_root(options.repo),
            model=model_name(options.model or default_model()),
        )
        return session, True

    def turns(self) -> list[Turn]:
        """Turns queued or running."""
        return self._queue.live()

    def blocks(self) -> Any:
        """The KV block store (memory, disk, Redis), opened on first use; None if it cannot be."""
        with self._blocks_lock:
            if not self._blocks_tried:
                self._blocks_tried = True
                try:
                    from kvstore.open import open_block_store

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
        name = model_name(model or default_model())
        check_model_exists(name)
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

    def rename(self, id_or_prefix: str, title: str) -> Session:
        title = " ".join(title.split())
        if not title:
            raise UsageError("empty title")
        session = self.show(id_or_prefix)
        self.store.update_meta(session, title=title)
        return session

    def fork(self, id_or_prefix: str, at: int | None = None, title: str | None = None) -> Session:
        """A new session with the first `at` messages (default: all); it shares the parent's KV blocks."""
        child = forking.fork(self.store, self.resolve(id_or_prefix), at, title)
        # Pinning opens the block store and hashes the weights: seconds, so in the background.
        self._workers.in_background(lambda: forking.pin_fork(self.blocks(), child))
        return child

    def delete(self, id_or_prefix: str) -> str:
        """Remove a session and unpin its KV blocks (blocks other sessions share stay pinned by them)."""
        session_id = self.resolve(id_or_prefix)
        self.leases.acquire(session_id)  # refuses while another process uses it
        try:
            self.store.delete(session_id)
        finally:
            self.leases.release(session_id)
        self._workers.in_background(self._unpin, session_id)  # opening the block store may take seconds
        return session_id

    def _unpin(self, session_id: str) -> None:
        blocks = self.blocks()
        if blocks is not None:
            blocks.unpin(session_id)

    def wait_background(self, timeout: float | None = None) -> None:
        """Wait for the KV pins and unpins that fork/delete left running (tests, shutdown)."""
        self._workers.wait_background(timeout)

    def open(self, id_or_prefix: str) -> Session:
        """Take the session's lease for as long as it is open here (the TUI), and load it."""
        session_id = self.resolve(id_or_prefix)
        self.leases.acquire(session_id)
        return self.store.load(session_id)

    def close_session(self, session_id: str) -> None:
        self.leases.release(session_id)

    def close(self, cancel_pending: bool = False, timeout: float | None = None) -> bool:
        """Finish (or with `cancel_pending`, cancel) queued and running turns, write pending KV blocks,
        release every lease. `timeout`: give up waiting for the engine after that many seconds (a turn
        still running is then abandoned). True when everything finished in time."""
        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        if cancel_pending:
            for turn in self.turns():
                turn.cancel()
        if not self._workers.stop_admitting(left()):  # Redis still starting after `timeout`
            return False
        # Agent turns come back to the engine thread between their steps: it stays up until they end.
        for turn in self.turns():
            turn.wait(left())
        clean = self._engine.close(left()) and not self.turns()
        self._workers.stop_background(wait=clean)
        if self._blocks is not None and clean:
            try:
                self._blocks.close() if self._owns_blocks else self._blocks.flush()
            except Exception as exc:
                log.warning("KV blocks not written (%s)", exc)
        if self._started.done() and self._started.exception() is None and self._leases is not None:
            self._leases.close()
        return clean

    def __enter__(self) -> SessionService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

