"""`workbench serve`: an engine worker fed through Redis (docs/serve.md); `-p ... --remote` submits to it."""

from __future__ import annotations

import argparse
import os
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
    p.add_argument(
        "--concurrency",
        type=int,
        default=4,
        metavar="N",
        help="requests in progress at once (their turns share the one engine; default 4)",
    )
    http = p.add_argument_group("HTTP front door (OpenAI-compatible)")
    http.add_argument(
        "--http",
        nargs="?",
        const="127.0.0.1:8080",
        metavar="HOST:PORT",
        help="serve /v1/chat/completions, /v1/completions, /v1/models (default 127.0.0.1:8080)",
    )
    http.add_argument(
        "--serve-model",
        dest="serve_models",
        action="append",
        metavar="NAME",
        help="a model to serve (repeatable; default Qwen/Qwen3-0.6B)",
    )
    http.add_argument("--serve-backend", dest="serve_backend", choices=("numpy", "mlx"))
    http.add_argument("--api-key", help="require `Authorization: Bearer KEY` (default: $WORKBENCH_API_KEY)")
    http.add_argument("--max-body", type=int, default=4 << 20, metavar="BYTES", help="largest request body")
    http.add_argument("--max-concurrent", type=int, default=8, metavar="N",
                      help="requests in progress at once; more get 429 (default 8)")  # fmt: skip
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from core import redis_server
    from serve.worker import Worker
    from sessions.service import SessionService

    if args.http is not None:
        return run_http(args)
    if args.claim_idle_ms < 100:
        raise UsageError(f"--claim-idle-ms must be >= 100, got {args.claim_idle_ms}")
    if args.concurrency < 1:
        raise UsageError(f"--concurrency must be >= 1, got {args.concurrency}")
    client = redis_server.connect()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with SessionService(client) as svc:
        worker = Worker(
            client, svc, name=args.name, claim_idle_ms=args.claim_idle_ms, concurrency=args.concurrency
        )
        try:
            worker.run(stop, max_requests=args.max_requests)
        except KeyboardInterrupt:
            return 130
    return 0


def parse_bind(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--http wants HOST:PORT (e.g. 127.0.0.1:8080), got {value!r}")
    return host.strip("[]"), int(port)


def run_http(args: argparse.Namespace) -> int:
    import ipaddress

    from serve.completion import Completer
    from serve.http import Limits, serve_http

    host, port = parse_bind(args.http)
    api_key = args.api_key or os.environ.get("WORKBENCH_API_KEY") or None
    loopback = host == "localhost" or _is_loopback(host, ipaddress)
    if not loopback and not api_key:
        raise UsageError(
            f"--http {args.http} is not a loopback address: give --api-key (or WORKBENCH_API_KEY)"
        )
    if args.max_body < 1 or args.max_concurrent < 1:
        raise UsageError("--max-body and --max-concurrent must be >= 1")
    import engine

    completer = Completer(args.serve_models or [engine.DEFAULT_MODEL], backend=args.serve_backend)
    try:
        completer.preload()
        print(f"workbench: serving {', '.join(completer.models)} on http://{host}:{port}/v1", flush=True)
        serve_http(completer, host, port, Limits(api_key, args.max_body, args.max_concurrent))
    finally:
        completer.close()
    return 0


def _is_loopback(host: str, ipaddress: Any) -> bool:
    try:
        return bool(ipaddress.ip_address(host).is_loopback)
    except ValueError:
        return False


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
    return headless.drive(turn, writer)  # type: ignore[arg-type]
