"""`workbench doctor`, and what bare `workbench` prints until the TUI exists."""

from __future__ import annotations

import argparse
import json

from workbench.doctor import as_dicts, failed_essential, format_checks, run_checks

USAGE = """\
Use it from the command line:
  workbench -p "how does the cache work?"      ask about the repo in the current directory
  workbench -p - < prompt.txt                  read the prompt from stdin
  workbench --continue -p "and then?"          continue the latest session in this repo
  workbench --resume ID -p "..."               resume a session by id (a unique prefix will do)
  workbench index [--watch]                    index this repo for code search / RAG
  workbench search "query"                     search the code index
  workbench sessions list|search|show|export   find and manage sessions
  workbench models list|pull                   local models
  workbench cache stats|gc|clear               the KV block cache
  workbench doctor                             check this machine
Run `workbench --help` for every option."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check Python, backends, Redis, data dir and models")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    checks = run_checks()
    if args.json:
        print(json.dumps({"ok": not failed_essential(checks), "checks": as_dicts(checks)}, indent=2))
    else:
        print("workbench doctor")
        print(format_checks(checks))
    return 1 if failed_essential(checks) else 0


def welcome() -> int:
    """Bare `workbench`: the terminal UI is the next wave; until then, say what works and how."""
    checks = run_checks()
    print("Workbench: a local coding assistant for this repository.\n")
    print(format_checks(checks))
    print()
    print(USAGE)
    return 1 if failed_essential(checks) else 0
