"""`workbench --remote`: the TUI submits its turns to `workbench serve` workers through Redis
(serve/remote.py) and shows them as it shows local ones; no model is needed on this machine."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis

from serve.remote import RemoteSessionService
from serve.worker import Worker
from tests.headless_support import chat_model_dir
from tests.test_serve_worker import worker as worker  # the fixture: an in-process worker thread
from tests.test_tui_chat import main_screen, send
from tests.tui_support import SIZE, make_app, wait_for
from workbench.tui.widgets.chat import AssistantMessage


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return chat_model_dir(tmp_path_factory.getbasetemp())


def test_the_tui_runs_its_turns_on_a_worker(
    worker: Worker, redis_client: redis.Redis, model_dir: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)

    async def scenario() -> None:
        remote = lambda: RemoteSessionService(redis_client)  # noqa: E731
        # The model directory is the worker's: this side only names it.
        app = make_app(model_dir, repo, tmp_path / "data", remote, remote=True, rag=False, max_tokens=8)
        async with app.run_test(size=SIZE) as pilot:
            screen = main_screen(app)
            await wait_for(pilot, lambda: app.backend._service is not None)
            await send(pilot, app, "where is the parser?")
            await wait_for(pilot, lambda: screen.turn is not None and screen.turn.done)
            result = screen.turn.result
            assert not result.is_error, result
            assert screen.query(AssistantMessage).last().text == result.text != ""
            assert screen.session_id == result.session_id
            assert type(app.screen).__name__ == "MainScreen"  # no "get a model" screen: the worker has it
        shown = RemoteSessionService(redis_client).show(result.session_id)
        assert [m.role for m in shown.messages] == ["user", "assistant"]

    asyncio.run(scenario())
