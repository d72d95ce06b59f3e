"""The context panel lists the turn's retrieved chunks and opens one with syntax highlighting; the
status bar follows Redis going away and coming back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis

from sessions import SessionService
from sessions.events import Retrieval, RetrievedChunk
from tests.conftest import PrivateRedis
from tests.headless_support import chat_model_dir
from tests.tui_support import SIZE, make_app, wait_for
from workbench.tui.screens import main as main_module
from workbench.tui.screens.chunk import ChunkScreen
from workbench.tui.widgets.context import ContextPanel
from workbench.tui.widgets.status import StatusBar

SOURCE = "\n".join(f"line_{n} = {n}  # comment {n}" for n in range(1, 41)) + "\n"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return chat_model_dir(tmp_path_factory.getbasetemp())


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "src").mkdir(parents=True)
    (root / "src" / "app.py").write_text(SOURCE)
    return root


def retrieval(*chunks: RetrievedChunk) -> Retrieval:
    return Retrieval("s1", chunks=list(chunks), tokens=sum(c.tokens for c in chunks), budget=1000)


def test_a_retrieved_chunk_opens_highlighted_and_copies_its_own_lines(
    tmp_path: Path, repo: Path, model_dir: Path
) -> None:
    chunk = RetrievedChunk("src/app.py", 20, 24, "line_20", 0.87, 60)

    async def scenario() -> None:
        app = make_app(model_dir, repo, tmp_path / "data")
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.screen.query(StatusBar) and
                           app.screen.query_one(StatusBar).status.activity == "ready")  # fmt: skip
            screen = app.screen
            await pilot.press("ctrl+l")  # show the context panel
            panel = screen.query_one(ContextPanel)
            panel.show(retrieval(RetrievedChunk("src/other.py", 1, 2, "", 0.5, 9), chunk))
            await pilot.pause()
            chunks = panel.query_one("#context-chunks")
            assert chunks.display and chunks.option_count == 2
            assert "2 chunks, 69 of 1,000 tokens" in str(panel.query_one("#context-report").render())
            chunks.focus()
            chunks.highlighted = 1
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, ChunkScreen) and app.screen.code != "")
            syntax = app.screen.query_one("#chunk-code").content
            assert type(syntax).__name__ == "Syntax" and syntax.highlight_lines == set(range(20, 25))
            assert syntax.start_line == 14 and syntax.code.splitlines()[0].startswith("line_14 = 14")
            assert syntax.lexer is not None and "python" in str(syntax.lexer).lower()
            await pilot.press("c")
            assert app.copied[-1].lines == 5 and app._clipboard.startswith("line_20 = 20")
            await pilot.press("escape")
            assert not isinstance(app.screen, ChunkScreen)

    asyncio.run(scenario())


def test_a_chunk_outside_the_repository_or_gone_is_an_error_on_screen(tmp_path: Path, repo: Path) -> None:
    async def opened(chunk: RetrievedChunk) -> str:
        app = make_app(tmp_path / "no-model", repo, tmp_path / "data")
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            app.push_screen(ChunkScreen(str(repo), chunk))
            def code() -> str:
                shown = app.screen.query("#chunk-code") if isinstance(app.screen, ChunkScreen) else []
                return str(shown[0].render()) if shown else "reading"

            await wait_for(pilot, lambda: "reading" not in code())
            return str(app.screen.query_one("#chunk-code").render())

    escaped = asyncio.run(opened(RetrievedChunk("../outside.py", 1, 2, "", 0.1, 3)))
    assert "cannot open ../outside.py" in escaped and "outside the repository" in escaped
    gone = asyncio.run(opened(RetrievedChunk("src/deleted.py", 1, 2, "", 0.1, 3)))
    assert "cannot open src/deleted.py" in gone


def test_the_status_bar_says_when_redis_goes_down_and_comes_back(
    tmp_path: Path, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(main_module, "REDIS_POLL_S", 0.2)
    server = PrivateRedis(tmp_path / "redis").start()
    client = redis.Redis(unix_socket_path=str(server.socket), socket_timeout=2)

    async def scenario() -> None:
        app = make_app(
            tmp_path / "no-model", repo, tmp_path / "data", make_service=lambda: SessionService(client)
        )
        said: list[str] = []  # every Redis notification, kept (the app's own list drops expired ones)
        notify = app.notify

        def recording_notify(message: str, **options: object) -> None:
            if options.get("title") == "Redis":
                said.append(message)
            notify(message, **options)  # type: ignore[arg-type]

        app.notify = recording_notify  # type: ignore[method-assign]
        async with app.run_test(size=SIZE) as pilot:
            status = lambda: app.screen_stack[1].query_one(StatusBar).status.redis  # noqa: E731
            await wait_for(pilot, lambda: len(app.screen_stack) > 1 and status().startswith("redis ok"))
            server.stop()
            await wait_for(pilot, lambda: status().startswith("redis down"))
            assert any("sessions are safe on disk" in m for m in said)
            server.start()
            await wait_for(pilot, lambda: status().startswith("redis ok"))
            assert said[-1] == "Redis is reachable again"

    try:
        asyncio.run(scenario())
    finally:
        server.stop()
