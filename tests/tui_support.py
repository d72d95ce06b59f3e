"""Helpers of the TUI tests: the real app on the real session service, a tiny model, a private Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workbench.tui.app import WorkbenchApp
from workbench.tui.backend import Backend, LaunchOptions

SIZE = (110, 32)


def make_app(
    model_dir: Path,
    repo: Path,
    data_dir: Path,
    make_service: Callable[[], Any] | None = None,
    **options: object,
) -> WorkbenchApp:
    options.setdefault("allow_tools", "none")  # random weights may emit a <tool_call>: keep replies plain
    launch = LaunchOptions(repo=str(repo), model=str(model_dir), watch_index=False, **options)  # type: ignore[arg-type]
    return WorkbenchApp(Backend(launch, make_service), data_dir)


async def wait_for(pilot: object, condition: Callable[[], bool], timeout: float = 60.0) -> None:
    """Let the app run until `condition()` holds (a worker finished, a reply arrived)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            app = pilot.app  # type: ignore[attr-defined]
            said = [n.message for n in app._notifications]
            workers = [(w.name, w.state.name) for w in app.workers]
            raise AssertionError(f"timed out waiting for the app; notifications {said}, workers {workers}")
        await pilot.pause(0.05)  # type: ignore[attr-defined]
