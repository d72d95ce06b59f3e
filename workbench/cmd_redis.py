"""`workbench redis status|stop`: the embedded Redis server."""

from __future__ import annotations

import argparse
import json
import os


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("redis", help="the embedded Redis server (status, stop)")
    actions = p.add_subparsers(title="actions", metavar="ACTION", required=True)
    status = actions.add_parser("status", help="is it running, and where")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=run_status)
    stop = actions.add_parser("stop", help="stop the embedded server (data is kept in its AOF)")
    stop.set_defaults(func=run_stop)


def run_status(args: argparse.Namespace) -> int:
    from core import redis_server  # redis-py costs ~140 ms: only load it when used

    url = os.environ.get("REDIS_URL")
    if url:
        info = redis_server.server_info()
        data = {"embedded": False, "url": info.url, "version": info.version, "running": True}
    else:
        pid = redis_server.embedded_pid()
        data = {"embedded": True, "url": redis_server.embedded_url(), "running": pid is not None, "pid": pid}
    if args.json:
        print(json.dumps(data))
    else:
        state = "running" if data["running"] else "not running"
        print(f"{'embedded' if data['embedded'] else 'external'} Redis at {data['url']}: {state}")
    return 0


def run_stop(args: argparse.Namespace) -> int:
    from core import redis_server

    if os.environ.get("REDIS_URL"):
        print("workbench: REDIS_URL is set; Workbench never stops a server it did not start")
        return 0
    stopped = redis_server.stop_embedded()
    print("embedded Redis stopped" if stopped else "embedded Redis was not running")
    return 0
