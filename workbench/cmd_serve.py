"""`workbench serve`: an engine worker fed through Redis (docs/serve.md); `-p ... --remote` submits to it."""

from __future__ import annotations

import argparse
import signal
import threading
from typing import TYPE_CHECKING, Any

from core.errors import UsageError
from workbench import headless

if TYPE_CHECKING:
    from workbench.headless import TurnRequest


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run an engine worker answering turns queued in Redis (docs/serve.md)",
        description="Read turn requests from the Redis stream wb:srv:{wbq}:requests (consumer group "
        "'workers'), run them, write their events to each request's reply stream.",
    )
    p.add_argument("--name", help="consumer name in the group (default: host:pid)")
    p.add_argument(
        "--claim-idle-ms",
        type=int,
        default=30_000,
        metavar="MS",
        help="take over a request another worker left pending this long (default 30000)",
    )
    p.add_argument("--max-requests", type=int, default=None, metavar="N", help="exit after N requests")
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from core import redis_server
    from serve.worker import Worker
    from sessions.service import SessionService

    if args.claim_idle_ms < 100:
        raise UsageError(f"--claim-idle-ms must be >= 100, got {args.claim_idle_ms}")
    client = redis_server.connect()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with SessionService(client) as svc:
        worker = Worker(client, svc, name=args.name, claim_idle_ms=args.claim_idle_ms)
        try:
            worker.run(stop, max_requests=args.max_requests)
        except KeyboardInterrupt:
            return 130
    return 0


def run_remote(request: TurnRequest, prompt: str) -> int:
    """`workbench -p PROMPT --remote`: the turn runs on a worker; the output is the same as local."""
    from core import redis_server
    from serve.client import start_remote_turn

    if request.continue_session:
        raise UsageError("--continue with --remote: give the session with --resume ID")
    options: dict[str, Any] = {"repo": request.repo, "no_cache": request.no_cache,
                               **request.settings, **request.sampling}  # fmt: skip
    if request.model:
        options["model"] = request.model
    if request.backend:
        options["backend"] = request.backend
    writer = headless.make_writer(request.output_format)
    turn = start_remote_turn(redis_server.connect(), prompt, request.resume, options)
    return headless.drive(turn, writer, new_session=request.resume is None)  # type: ignore[arg-type]
