"""The TUI's side of the session service and the indexer. Every method may block (Redis, disk, model
files), so the app calls them only from thread workers; nothing here imports a widget or Textual.

Heavy packages (sessions.service pulls in redis; engine pulls in numpy) are imported on first use, so
importing the TUI stays cheap and the first frame is painted before any of them load.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sessions.model import Session, SessionInfo
    from sessions.options import TurnOptions
    from sessions.service import SessionService
    from sessions.store import SearchHit
    from sessions.turn import Turn

log = logging.getLogger("workbench.tui")


@dataclass
class LaunchOptions:
    """What `workbench` was started with (the TUI's subset of the headless flags)."""

    repo: str
    model: str | None = None
    backend: str | None = None
    resume: str | None = None
    continue_session: bool = False
    rag: bool | None = None
    thinking: bool | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    watch_index: bool = True
    allow_tools: str = "read"  # read-only tools run on their own; changing ones ask (screens/approval.py)
    remote: bool = False  # turns run on `workbench serve` workers (serve/remote.py); no local model


@dataclass
class IndexState:
    state: str  # "off" | "starting" | "indexing" | "ready" | "error"
    detail: str = ""
    files: int = 0
    chunks: int = 0
    done: int = 0  # progress of a running pass (files), when known
    total: int = 0


def unsafe_index_root(repo: str) -> str | None:
    """Why `repo` must not be indexed without being asked (a home directory or /), or None."""
    real = os.path.realpath(repo)
    if real == os.path.realpath(os.path.expanduser("~")):
        return "it is your home directory"
    if real == os.path.sep:
        return "it is the file system root"
    return None


class Backend:
    def __init__(
        self,
        options: LaunchOptions,
        make_service: Callable[[], SessionService] | None = None,
    ) -> None:
        self.options = options
        self._make_service = make_service
        self._service: SessionService | None = None
        self._lock = threading.Lock()
        self._watcher: Any = None
        self.open_session_id: str | None = None

    # -- connection --------------------------------------------------------------------------------

    def connect(self) -> SessionService:
        """The session service, created on first call (this may start the embedded Redis)."""
        with self._lock:
            if self._service is None:
                if self._make_service is not None:
                    self._service = self._make_service()
                else:
                    from sessions.service import SessionService

                    self._service = SessionService()
            return self._service

    @property
    def service(self) -> SessionService:
        if self._service is None:
            raise RuntimeError("the session service is not connected yet")
        return self._service

    def redis_state(self) -> str:
        """ "ok <version>" or the reason Redis cannot be reached."""
        try:
            info = self.connect().r.info("server")
            return f"ok {info.get('redis_version', '?')}"
        except Exception as exc:  # any failure is a status to show, not a crash
            return f"down: {type(exc).__name__}: {exc}"

    def close(self) -> None:
        self.stop_index()
        if self._service is not None:
            self._service.close()

    # -- models --------------------------------------------------------------------------------------

    def model_name(self) -> str:
        if self.options.model:
            return self.options.model
        import engine

        return engine.DEFAULT_MODEL

    def model_problem(self, name: str) -> str | None:
        """Why model `name` cannot be loaded here (not found, not a model), or None when it can."""
        if self.options.remote:
            return None  # the workers load it
        from engine.errors import EngineError
        from engine.loader import resolve_path

        try:
            resolve_path(name)
        except EngineError as exc:
            return str(exc)
        return None

    def local_models(self) -> list[Any]:
        from engine import hub

        return hub.list_local()

    def pull_model(self, repo_id: str, progress: Callable[[int, int], None] | None = None) -> Path:
        """Download a model from the Hub; `progress(bytes written, bytes expected)` as it goes."""
        from engine import hub

        return hub.pull(repo_id, progress=progress)

    # -- sessions ------------------------------------------------------------------------------------

    def sessions(self, all_repos: bool, limit: int = 200) -> list[SessionInfo]:
        return self.connect().list(None if all_repos else self.options.repo, limit)

    def search(self, query: str, all_repos: bool) -> list[SearchHit]:
        return self.connect().search(query, None if all_repos else self.options.repo, limit=50)

    def show(self, session_id: str) -> Session:
        """The session as recorded (no lease taken)."""
        return self.connect().show(session_id)

    def session_to_open(self) -> str | None:
        """The session `--resume ID` / `--continue` names (resolved), or None for a new one."""
        service = self.connect()
        if self.options.resume:
            return service.resolve(self.options.resume)
        if self.options.continue_session:
            latest = service.latest(self.options.repo)
            return latest.id if latest else None
        return None

    def open(self, session_id: str) -> Session:
        """Load a session and hold its lease while it is on screen (release the previous one)."""
        service = self.connect()
        session = service.open(session_id)
        previous, self.open_session_id = self.open_session_id, session.id
        if previous and previous != session.id:
            service.close_session(previous)
        return session

    def warm(self, session_id: str) -> Any:
        """Restore the session's KV history into the engine's live cache now (model loaded first), so
        its next turn prefills only the new message; the sessions.warm.WarmReport of what was read."""
        return self.connect().warm(session_id, self.options.model, self.options.backend).result()

    def forget_open(self) -> None:
        if self.open_session_id:
            self.connect().close_session(self.open_session_id)
            self.open_session_id = None

    def start_turn(self, session_id: str | None, prompt: str, options: TurnOptions) -> Turn:
        return self.connect().start_turn(session_id, prompt, options)

    def turn_options(self, rag: bool | None, thinking: bool | None, policy: Any = None) -> TurnOptions:
        from sessions.options import TurnOptions

        o = self.options
        return TurnOptions(
            model=o.model,
            backend=o.backend,
            repo=o.repo,
            rag=rag,
            thinking=thinking,
            max_tokens=o.max_tokens,
            temperature=o.temperature,
            allow_tools=o.allow_tools,
            policy=policy,
            ask_approval=policy is not None,  # changing calls come back as `approval` events
        )

    def fork(self, session_id: str, at: int | None) -> Session:
        return self.connect().fork(session_id, at)

    def rename(self, session_id: str, title: str) -> Session:
        return self.connect().rename(session_id, title)

    def delete(self, session_id: str) -> str:
        if self.open_session_id == session_id:
            self.forget_open()
        return self.connect().delete(session_id)

    def export(self, session_id: str, directory: str) -> Path:
        """Write the session as Markdown into `directory`; the file's path."""
        text = self.connect().export(session_id, "markdown")
        path = Path(directory) / f"workbench-session-{session_id}.md"
        path.write_text(text, encoding="utf-8")
        return path

    # -- the repository's index ----------------------------------------------------------------------

    def start_index(self, on_state: Callable[[IndexState], None]) -> None:
        """Keep the repo's index current in the background (the watcher's own thread); report its state."""
        reason = unsafe_index_root(self.options.repo)
        if reason:
            on_state(IndexState("off", f"not indexing {self.options.repo}: {reason}"))
            return
        on_state(IndexState("starting", "loading the embedding model"))
        from indexer import Index
        from indexer.index import shared_encoder
        from indexer.watch import Watcher

        ix = Index.open(self.options.repo, self.connect().r, encoder=shared_encoder())
        on_state(IndexState("indexing", "first pass"))

        def updated(stats: Any) -> None:
            files, chunks = ix.store.counts()
            on_state(IndexState("ready", f"{stats.files_changed} changed", files=files, chunks=chunks))

        def progress(report: Any) -> None:
            if report.phase == "waiting":
                on_state(IndexState("waiting", f"for {report.holder}"))
            elif report.phase == "reading":
                on_state(IndexState("reading", done=report.files_done, total=report.files_total))
            elif report.phase == "embedding":
                eta = f"ETA {report.eta_s:.0f} s" if report.eta_s else ""
                on_state(IndexState("embedding", eta, done=report.chunks_done, total=report.chunks_total))

        self._watcher = Watcher(ix, on_update=updated, progress=progress).start()

    def reindex(self) -> None:
        if self._watcher is not None:
            self._watcher.ix.update()

    def stop_index(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stop()
