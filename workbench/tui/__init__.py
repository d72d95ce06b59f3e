"""The terminal UI. `run(args)` opens it; importing this package loads nothing heavy (not even Textual)."""

from __future__ import annotations

import argparse
import os


def run(args: argparse.Namespace) -> int:
    from sessions.options import repo_root  # light: no redis, no engine
    from workbench.tui.app import WorkbenchApp, default_data_dir
    from workbench.tui.backend import LaunchOptions

    options = LaunchOptions(
        repo=repo_root(getattr(args, "repo", None)),
        model=getattr(args, "model", None),
        backend=getattr(args, "backend", None),
        resume=getattr(args, "resume", None),
        continue_session=bool(getattr(args, "continue_session", False)),
        rag=getattr(args, "rag", None),
        thinking=getattr(args, "thinking", None),
        max_tokens=getattr(args, "max_tokens", None),
        temperature=getattr(args, "temperature", None),
        # The TUI runs the repo's watcher unless this is set (remote: it keeps the shared index current).
        watch_index=not os.environ.get("WORKBENCH_NO_INDEX"),
        remote=bool(getattr(args, "remote", False)),
    )
    from workbench.tui.backend import Backend

    make_service = None
    if options.remote:  # turns go to `workbench serve` workers; the protocol carries no tool approvals
        options.allow_tools = "none"

        def make_service() -> object:
            from serve.remote import RemoteSessionService

            return RemoteSessionService()

    WorkbenchApp(Backend(options, make_service), default_data_dir()).run()  # type: ignore[arg-type]
    return 0
