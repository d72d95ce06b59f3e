"""The session reads every session service answers the same way from its store: the local service
(sessions/service.py) and the one whose turns run on remote workers (serve/remote.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from core.errors import UsageError
from sessions import export as exporting
from sessions.options import repo_root

if TYPE_CHECKING:
    from sessions.model import Session, SessionInfo
    from sessions.store import SearchHit, SessionStore


class SessionReads:
    if TYPE_CHECKING:
        store: SessionStore  # the subclass's (a property on the local service: it waits for start-up)

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

    def export(self, id_or_prefix: str, fmt: Literal["markdown", "json"] = "markdown") -> str:
        session = self.show(id_or_prefix)
        if fmt == "markdown":
            return exporting.to_markdown(session)
        if fmt == "json":
            return exporting.to_json(session)
        raise UsageError(f"unknown export format {fmt!r} (markdown or json)")
