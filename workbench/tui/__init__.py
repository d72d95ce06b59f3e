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
        watch_index=not os.environ.get(
            "WORKBENCH_NO_INDEX"
        ),  # the TUI runs the repo's watcher unless this is set
    )
    from workbench.tui.backend import Backend

    WorkbenchApp(Backend(options), default_data_dir()).run()
    return 0
