"""The headless CLI's side of the session service: open it, pick the session, start turns.

The CLI never talks to the engine or to Redis itself; everything goes through `SessionService`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.errors import NotFound

if TYPE_CHECKING:
    from sessions.options import TurnOptions
    from sessions.service import SessionService
    from sessions.turn import Turn
    from workbench.headless import TurnRequest


def open_service() -> SessionService:
    from sessions.service import SessionService

    return SessionService()


def pick_session(svc: SessionService, request: TurnRequest) -> str | None:
    """The id of the session to resume or continue, or None for a new one. NotFound / AmbiguousId
    (a UsageError listing the candidates) for an id the store cannot resolve."""
    if request.resume is not None:
        return svc.resolve(request.resume)
    if request.continue_session:
        latest = svc.latest(request.repo)
        if latest is None:
            raise NotFound(
                f"no session to continue in {request.repo} "
                "(start one with -p, or see `workbench sessions list`)"
            )
        return latest.id
    return None


def turn_options(request: TurnRequest) -> TurnOptions:
    from sessions.options import TurnOptions

    return TurnOptions(
        model=request.model,
        backend=request.backend,
        repo=request.repo,
        no_cache=request.no_cache,
        allow_tools=request.allow_tools,
        max_turns=request.max_turns,
        **request.settings,
        **request.sampling,
    )


def start_turn(svc: SessionService, session_id: str | None, prompt: str, request: TurnRequest) -> Turn:
    """Queue one turn; with `session_id` None the service creates the session once the model loaded."""
    return svc.start_turn(session_id, prompt, turn_options(request))
