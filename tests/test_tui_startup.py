"""The TUI paints before anything slow: importing it loads no redis, numpy or engine, and the real
`workbench` command opens it in a terminal (tmux) where a prompt can be typed and the app quit."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tui_support import SIZE, make_app, wait_for
from workbench.tui.clipboard import osc52

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("redis", "numpy", "engine", "mlx", "torch", "sessions.service", "indexer")


def test_importing_the_tui_loads_nothing_heavy() -> None:
    code = (
        "import sys, json; import workbench.tui.app; import workbench.cli; "
        f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert json.loads(out.stdout) == []


def test_osc52_is_wrapped_for_tmux_so_the_copy_reaches_the_outer_terminal() -> None:
    bare, route = osc52("hi", env={})
    assert bare == "\x1b]52;c;aGk=\a" and route == "OSC 52"
    wrapped, route = osc52("hi", env={"TMUX": "/tmp/tmux-0/default,1,0"})
    assert route == "OSC 52 via tmux"
    assert wrapped == "\x1bPtmux;\x1b\x1b]52;c;aGk=\a\x1b\\"


def test_the_theme_chosen_is_remembered(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()

    async def choose() -> None:
        app = make_app(tmp_path / "no-model", repo, tmp_path / "data")
        async with app.run_test(size=SIZE) as pilot:
            app.theme = "workbench-ember"
            await pilot.pause(0.1)

    async def reopen() -> str:
        app = make_app(tmp_path / "no-model", repo, tmp_path / "data")
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause(0.1)
            return app.theme

    asyncio.run(choose())
    assert asyncio.run(reopen()) == "workbench-ember"


def test_without_a_model_the_first_run_says_how_to_get_one(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()

    async def scenario() -> None:
        app = make_app(tmp_path / "no-such-model", repo, tmp_path / "data")
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: type(app.screen).__name__ == "NoModelScreen")
            text = str(app.screen.query_one(".dialog-text").render())
            assert "workbench models pull" in text and "--model DIR" in text

    asyncio.run(scenario())


def test_the_palette_offers_the_workbench_commands(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()

    async def scenario() -> None:
        app = make_app(tmp_path / "no-model", repo, tmp_path / "data")
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause(0.1)
            from workbench.tui.screens.main import MainScreen

            main = next(s for s in app.screen_stack if isinstance(s, MainScreen))
            titles = {c.title for c in app.get_system_commands(main)}
            assert {
                "New session",
                "Sessions",
                "Copy reply",
                "Toggle RAG",
                "Re-index",
                "Switch model",
            } <= titles
            assert any("theme" in t.lower() for t in titles)

    asyncio.run(scenario())


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is installed by .ci/run")
def test_the_real_workbench_command_opens_the_tui_in_tmux(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    socket = str(tmp_path / "tmux.sock")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TMUX")}
    env["WORKBENCH_NO_INDEX"] = "1"
    command = f"cd {repo} && {sys.executable} -m workbench --model {tmp_path / 'no-model'}"
    tmux = ["tmux", "-S", socket]
    subprocess.run([*tmux, "new-session", "-d", "-x", "120", "-y", "36", command], env=env, check=True)
    try:

        def pane() -> str:
            return subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True, text=True).stdout

        deadline = time.monotonic() + 30
        while "Ask about this repository" not in pane() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "Ask about this repository" in pane(), pane()
        deadline = time.monotonic() + 30
        while "No model to answer with yet" not in pane() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "No model to answer with yet" in pane(), pane()
        subprocess.run([*tmux, "send-keys", "Escape"], check=True)
        time.sleep(1.0)  # tmux's escape-time (500 ms): a key right after Esc would arrive as Alt+key
        subprocess.run([*tmux, "send-keys", "-l", "hello there"], check=True)
        deadline = time.monotonic() + 10
        while "hello there" not in pane() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "hello there" in pane()
        subprocess.run([*tmux, "send-keys", "C-q"], check=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            alive = subprocess.run([*tmux, "has-session"], capture_output=True).returncode == 0
            if not alive:
                break
            time.sleep(0.2)
        assert not alive, pane()
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)


def test_the_tui_indexes_the_repo_and_shows_its_progress(tmp_path: Path) -> None:
    """The watcher runs for the repo: the first pass's progress reaches the status bar, then its counts."""
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    for n in range(3):
        (repo / f"mod{n}.py").write_text(f"def function_{n}(x):\n    return x + {n}\n")
    from workbench.tui.screens.main import MainScreen
    from workbench.tui.widgets.status import StatusBar

    async def scenario() -> list[str]:
        app = make_app(tmp_path / "no-model", repo, tmp_path / "data")
        app.backend.options.watch_index = True
        seen: list[str] = []
        async with app.run_test(size=SIZE) as pilot:
            main = next(s for s in app.screen_stack if isinstance(s, MainScreen))
            bar = main.query_one(StatusBar)

            def ready() -> bool:
                seen.append(bar.status.index)
                return bar.status.index.startswith("index 3 files")

            await wait_for(pilot, ready, timeout=120)
        return seen

    seen = asyncio.run(scenario())
    assert seen[-1].startswith("index 3 files") and "chunks" in seen[-1]
    assert any(s != seen[-1] for s in seen)  # something was shown before the pass ended
