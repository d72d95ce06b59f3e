"""`workbench sessions list|search|show|export|rm|fork|rename`: find and manage sessions.

Every action goes through `sessions.SessionService`; ids may be given as unique prefixes. Actions whose
output is data take `--json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import UsageError
from workbench.argtypes import whole_number

if TYPE_CHECKING:
    from sessions.service import SessionService


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sessions", help="find and manage sessions: list, search, show, export, rm, fork, rename"
    )
    actions = p.add_subparsers(title="actions", metavar="ACTION", required=True)

    ls = actions.add_parser("list", help="sessions, newest first")
    ls.add_argument("--repo", metavar="PATH", help="only the sessions of this repository")
    ls.add_argument("-n", "--limit", type=_count, metavar="N", help="at most N sessions")
    ls.add_argument("--json", action="store_true", help="a JSON array")
    ls.set_defaults(func=run_list)

    search = actions.add_parser("search", help="full-text search over titles and every message")
    search.add_argument("words", nargs="+", metavar="WORD")
    search.add_argument("--repo", metavar="PATH", help="only the sessions of this repository")
    search.add_argument("-n", "--limit", type=_count, default=20, metavar="N", help="at most N hits (20)")
    search.add_argument("--json", action="store_true", help="a JSON array")
    search.set_defaults(func=run_search)

    show = actions.add_parser("show", help="a session's details and messages")
    show.add_argument("id", metavar="ID", help="session id or unique prefix")
    show.add_argument("--json", action="store_true", help="the whole session as JSON")
    show.set_defaults(func=run_show)

    export = actions.add_parser("export", help="write a session as Markdown or JSON")
    export.add_argument("id", metavar="ID")
    export.add_argument("--format", choices=("md", "json"), default="md")
    export.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    export.set_defaults(func=run_export)

    rm = actions.add_parser("rm", help="delete a session (its disk log and Redis side)")
    rm.add_argument("id", metavar="ID")
    rm.add_argument("--json", action="store_true")
    rm.set_defaults(func=run_rm)

    fork = actions.add_parser("fork", help="a new session with the first N messages of another")
    fork.add_argument("id", metavar="ID")
    fork.add_argument("--at", type=_count, metavar="N", help="keep messages 1..N (default: all)")
    fork.add_argument("--json", action="store_true")
    fork.set_defaults(func=run_fork)

    rename = actions.add_parser("rename", help="give a session a new title")
    rename.add_argument("id", metavar="ID")
    rename.add_argument("title", nargs="+", metavar="TITLE")
    rename.add_argument("--json", action="store_true")
    rename.set_defaults(func=run_rename)


_count = whole_number(1)


def _service() -> SessionService:
    from workbench.session_client import open_service  # imported here: `workbench --help` stays cheap

    return open_service()


def _repo(path: str | None) -> str | None:
    if path is None:
        return None
    repo = Path(path).expanduser()
    if not repo.is_dir():
        raise UsageError(f"--repo {path}: not a directory")
    return str(repo.resolve())


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def _print_json(data: Any) -> None:
    """Indented for a person at a terminal; one compact line for a program (the C encoder: ~10x faster)."""
    print(json.dumps(data, ensure_ascii=False, indent=2 if sys.stdout.isatty() else None))


def _info_line(info: Any) -> str:
    count = f"{info.message_count} msg"
    return f"{info.id}  {_when(info.updated)}  {count:>7}  {info.model}  {info.title}"


def run_list(args: argparse.Namespace) -> int:
    infos = _service().list(repo=_repo(args.repo), limit=args.limit)
    if args.json:
        _print_json([i.info_dict() for i in infos])
        return 0
    if not infos:
        where = f" in {_repo(args.repo)}" if args.repo else ""
        print(f"no sessions{where}", file=sys.stderr)
        return 0
    for info in infos:
        print(_info_line(info))
    return 0


def run_search(args: argparse.Namespace) -> int:
    query = " ".join(args.words)
    if not query.strip():
        raise UsageError("search needs at least one word")
    hits = _service().search(query, repo=_repo(args.repo), limit=args.limit)
    if args.json:
        _print_json([h.to_dict() for h in hits])
        return 0
    if not hits:
        print(f"no session mentions {query!r}", file=sys.stderr)
        return 0
    for hit in hits:
        where = f"message {hit.message_number}" if hit.message_number else "title"
        print(f"{hit.session.id}  {_when(hit.session.updated)}  {hit.score:6.2f}  {hit.session.title}")
        print(f"    {where}: {hit.snippet}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    svc = _service()
    session = svc.show(args.id)
    if args.json:
        _print_json(session.to_dict())
        return 0
    sys.stdout.write(svc.export(session.id, "markdown"))
    return 0


def run_export(args: argparse.Namespace) -> int:
    text = _service().export(args.id, "markdown" if args.format == "md" else "json")
    if not text.endswith("\n"):
        text += "\n"
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        Path(args.output).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def run_rm(args: argparse.Namespace) -> int:
    svc = _service()
    info = svc.show(args.id)
    svc.delete(info.id)
    if args.json:
        _print_json({"deleted": info.id, "title": info.title})
    else:
        print(f"deleted {info.id}  {info.title}")
    return 0


def run_fork(args: argparse.Namespace) -> int:
    forked = _service().fork(args.id, at=args.at)
    if args.json:
        _print_json(forked.info_dict())
    else:
        print(forked.id)
        print(f"forked from {forked.parent_id} at message {forked.fork_at}: {forked.title}", file=sys.stderr)
    return 0


def run_rename(args: argparse.Namespace) -> int:
    title = " ".join(args.title).strip()
    if not title:
        raise UsageError("the new title is empty")
    renamed = _service().rename(args.id, title)
    if args.json:
        _print_json(renamed.info_dict())
    else:
        print(f"{renamed.id}  {renamed.title}")
    return 0
