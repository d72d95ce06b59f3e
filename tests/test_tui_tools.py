"""Agent tools in the TUI: a changing call asks first (keys ignored for half a second), the answer is
applied, and every call shows in the chat, collapsed when it succeeded."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

import engine
from sessions.service import SessionService
from tests.agent_support import Steered, call, long_context_copy
from tests.tui_support import SIZE, make_app, wait_for
from workbench.tui.screens.approval import IGNORE_S, ApprovalScreen
from workbench.tui.screens.main import MainScreen
from workbench.tui.widgets.chat import ToolCallView


@pytest.fixture(scope="module")
def steered_dir(tiny_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return long_context_copy(tiny_model("qwen3").path, tmp_path_factory.mktemp("tui_tools") / "qwen3")


def run(steered_dir: Path, repo: Path, data: Path, replies: list[str], answer_keys: list[str]) -> Any:
    steered = Steered(engine.load_model(steered_dir, backend="numpy"), replies)

    async def scenario() -> Any:
        app = make_app(steered_dir, repo, data, lambda: SessionService(load_model=lambda n, b: steered),
                       allow_tools="read", temperature=0.0, rag=False, max_tokens=120)  # fmt: skip
        async with app.run_test(size=SIZE) as pilot:
            main = next(s for s in app.screen_stack if isinstance(s, MainScreen))
            await wait_for(pilot, lambda: app.backend._service is not None)
            main.query_one("#prompt").load_text("Fix the greeting in notes.txt")
            main.query_one("#prompt").action_submit()
            await wait_for(pilot, lambda: isinstance(app.screen, ApprovalScreen), timeout=60)
            question = app.screen
            await pilot.press("y")  # too soon: ignored, the question stays
            if time.monotonic() - question.opened < IGNORE_S:  # (a slow machine may already be past it)
                assert app.screen is question
            await pilot.pause(IGNORE_S)
            for key in answer_keys:
                await pilot.press(key)
            await wait_for(pilot, lambda: main.turn is not None and main.turn.done, timeout=60)
            await pilot.pause(0.2)
            views = list(main.query(ToolCallView))
            return main.turn.result, views

    return asyncio.run(scenario())


def test_an_approved_edit_is_applied_and_shown(steered_dir: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "notes.txt").write_text("helo world\n")
    edit = call("edit_file", path="notes.txt", old_text="helo", new_text="hello")
    result, views = run(steered_dir, repo, tmp_path / "data", [edit, "Fixed."], ["y"])
    assert (repo / "notes.txt").read_text() == "hello world\n"
    assert result.text == "Fixed."
    assert len(views) == 1 and not views[0].has_class("failed")
    assert views[0].signature.startswith("edit_file(")


def test_a_rejected_edit_leaves_the_file_alone_and_shows_the_refusal(
    steered_dir: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "notes.txt").write_text("helo world\n")
    edit = call("edit_file", path="notes.txt", old_text="helo", new_text="hello")
    result, views = run(steered_dir, repo, tmp_path / "data", [edit, "Left it."], ["n"])
    assert (repo / "notes.txt").read_text() == "helo world\n"
    assert len(views) == 1 and views[0].has_class("failed")
    assert result.tool_calls[0]["approval"]["by"] == "rejected"
