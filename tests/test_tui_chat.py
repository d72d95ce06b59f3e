"""The TUI drives the real session service: a prompt streams a reply, Esc stops it (the partial reply is
kept), a resumed session shows its history, sessions are searched, renamed, forked and deleted."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from tests.headless_support import MAX_POSITIONS, chat_model_dir
from tests.tui_support import SIZE, make_app, wait_for
from workbench.tui.screens.main import MainScreen
from workbench.tui.widgets.chat import AssistantMessage, UserMessage
from workbench.tui.widgets.prompt import PromptInput
from workbench.tui.widgets.status import StatusBar


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return chat_model_dir(tmp_path_factory.getbasetemp())


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / ".git").mkdir(parents=True)
    return root


def main_screen(app: object) -> MainScreen:
    return next(s for s in app.screen_stack if isinstance(s, MainScreen))  # type: ignore[attr-defined]


async def send(pilot: object, app: object, text: str, key: bool = True) -> None:
    """Type `text` and send it: with the Enter key (Pilot waits for the app to go idle, which may be
    the reply's end), or with `key=False` straight through the prompt's submit action."""
    prompt = app.screen.query_one(PromptInput)  # type: ignore[attr-defined]
    prompt.load_text(text)
    if key:
        await pilot.press("enter")  # type: ignore[attr-defined]
    else:
        prompt.action_submit()
        await pilot.pause(0)  # type: ignore[attr-defined]


def test_a_prompt_streams_a_reply_that_is_recorded(model_dir: Path, repo: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        app = make_app(model_dir, repo, tmp_path / "data", max_tokens=12, rag=False)
        async with app.run_test(size=SIZE) as pilot:
            await send(pilot, app, "Say hello")
            screen = main_screen(app)
            await wait_for(pilot, lambda: screen.turn is not None and screen.turn.done)
            await pilot.pause(0.2)
            users = screen.query(UserMessage)
            replies = screen.query(AssistantMessage)
            assert [u.text for u in users] == ["Say hello"]
            reply = replies.last()
            assert reply.finished and reply.text and reply.number == 2
            session = app.backend.service.show(screen.session_id)
            assert [m.content for m in session.messages] == ["Say hello", reply.text]
            assert app.history.entries == ["Say hello"]  # remembered for Up/Down next time
            report = str(screen.query_one("#context-report").render())  # the cache report, then the prefill
            tokens = screen.turn.result.tokens
            computed = tokens["prefilled"]
            assert f"prompt {tokens['prompt']:,}" in report
            assert f"({computed:,} of {computed:,} tokens)" in report
            await pilot.press("ctrl+r")
            assert app.clipboard == reply.text
            assert app.copied[-1].chars == len(reply.text)

    asyncio.run(scenario())


def test_escape_stops_the_engine_and_keeps_the_partial_reply(
    model_dir: Path, repo: Path, tmp_path: Path
) -> None:
    async def scenario() -> None:
        app = make_app(model_dir, repo, tmp_path / "data", max_tokens=3000, rag=False, temperature=0.0)
        async with app.run_test(size=SIZE) as pilot:
            await send(pilot, app, "Tell a very long story.", key=False)
            screen = main_screen(app)
            await wait_for(pilot, lambda: any(reply.text for reply in screen.query(AssistantMessage)))
            await pilot.press("escape")
            await wait_for(pilot, lambda: screen.turn.done, timeout=5)
            result = screen.turn.result
            assert result.finish_reason == "cancelled"
            assert result.tokens.get("generated", 0) < 3000
            await pilot.pause(0.2)
            reply = screen.query(AssistantMessage).last()
            assert reply.has_class("interrupted")
            stored = app.backend.service.show(screen.session_id).messages[-1]
            assert stored.status == "interrupted" and stored.content

    asyncio.run(scenario())


def test_a_prompt_sent_while_a_reply_runs_is_queued_and_sent_after(
    model_dir: Path, repo: Path, tmp_path: Path
) -> None:
    async def scenario() -> None:
        app = make_app(model_dir, repo, tmp_path / "data", max_tokens=1000, rag=False, temperature=0.0)
        async with app.run_test(size=SIZE) as pilot:
            await send(pilot, app, "Tell a very long story.", key=False)
            app.backend.options.max_tokens = 5  # the queued turn: short
            await send(pilot, app, "second question", key=False)
            screen = main_screen(app)
            assert screen.queue == ["second question"]
            assert screen.query_one("#queue").display
            await wait_for(pilot, lambda: len(screen.query(AssistantMessage)) == 2 and not screen.queue)
            await wait_for(pilot, lambda: screen.turn.done)
            assert [u.text for u in screen.query(UserMessage)] == [
                "Tell a very long story.",
                "second question",
            ]

    asyncio.run(scenario())


def test_resume_shows_the_history_and_continues_the_session(
    model_dir: Path, repo: Path, tmp_path: Path
) -> None:
    async def first() -> str:
        app = make_app(model_dir, repo, tmp_path / "data", max_tokens=8, rag=False)
        async with app.run_test(size=SIZE) as pilot:
            await send(pilot, app, "remember the parser")
            screen = main_screen(app)
            await wait_for(pilot, lambda: screen.turn is not None and screen.turn.done)
            return screen.session_id

    async def resumed(session_id: str) -> None:
        app = make_app(model_dir, repo, tmp_path / "data", max_tokens=8, rag=False, resume=session_id)
        async with app.run_test(size=SIZE) as pilot:
            screen = main_screen(app)
            await wait_for(pilot, lambda: screen.session_id == session_id)
            await pilot.pause(0.2)
            assert [u.text for u in screen.query(UserMessage)] == ["remember the parser"]
            # On open, before any prompt: the KV history comes back from the block store, and says so.
            said = lambda: [n.message for n in app._notifications if n.title == "KV cache"]  # noqa: E731
            await wait_for(pilot, lambda: bool(said()))
            restored = r"Restored [\d,]+ tokens from (disk|Redis)( and (disk|Redis))? in [\d.]+ s"
            assert re.fullmatch(restored, said()[0]), said()
            report = str(screen.query_one("#context-report").render())
            assert "restored" in report and "the next turn prefills only the new message" in report
            status = screen.query_one(StatusBar)
            assert status.status.context_size == MAX_POSITIONS and "ctx " in status.render_text()
            await send(pilot, app, "and now?")
            await wait_for(pilot, lambda: screen.turn is not None and screen.turn.done)
            assert screen.session_id == session_id
            result = screen.turn.result
            assert set(result.cache_by_tier) == {"live"} and result.tokens["cached"] > 0  # nothing read again
            assert f"/{MAX_POSITIONS:,}" in status.render_text()

    session_id = asyncio.run(first())
    asyncio.run(resumed(session_id))


def test_sessions_are_listed_searched_renamed_forked_and_deleted(
    model_dir: Path, repo: Path, tmp_path: Path
) -> None:
    async def scenario() -> None:
        app = make_app(model_dir, repo, tmp_path / "data", max_tokens=6, rag=False)
        async with app.run_test(size=SIZE) as pilot:
            screen = main_screen(app)
            await send(pilot, app, "where is the tokenizer cache")
            await wait_for(pilot, lambda: screen.turn is not None and screen.turn.done)
            sid = screen.session_id
            service = app.backend.service
            await pilot.press("ctrl+o")
            listing = screen.query_one("#sessions-list")
            await wait_for(
                pilot, lambda: listing.option_count == 1 and listing.get_option_at_index(0).id == sid
            )
            screen.query_one("#sessions-search").value = "tokenizer"
            await wait_for(
                pilot,
                lambda: (
                    listing.option_count == 1 and "tokenizer" in str(listing.get_option_at_index(0).prompt)
                ),
            )
            screen.query_one("#sessions-search").value = "zebra"
            await wait_for(pilot, lambda: listing.get_option_at_index(0).id is None)
            screen.query_one("#sessions-search").value = ""
            await wait_for(pilot, lambda: listing.get_option_at_index(0).id == sid)
            listing.focus()
            listing.highlighted = 0
            await pilot.press("r")
            await pilot.pause(0.1)
            app.screen.query_one("#answer").value = "Tokenizer questions"
            await pilot.press("enter")
            await wait_for(pilot, lambda: service.show(sid).title == "Tokenizer questions")
            await pilot.press("f")
            await wait_for(pilot, lambda: len(service.list(str(repo))) == 2)
            fork = next(s for s in service.list(str(repo)) if s.id != sid)
            assert fork.parent_id == sid
            await wait_for(pilot, lambda: screen.session_id == fork.id)
            listing.focus()
            await wait_for(pilot, lambda: listing.option_count == 2)
            index = next(i for i in range(2) if listing.get_option_at_index(i).id == sid)
            listing.highlighted = index
            await pilot.press("d")
            await pilot.pause(0.1)
            await pilot.press("y")
            await wait_for(pilot, lambda: [s.id for s in service.list(str(repo))] == [fork.id])

    asyncio.run(scenario())


def test_a_long_session_shows_its_last_messages_and_loads_earlier_ones_on_demand(
    model_dir: Path, repo: Path, tmp_path: Path, redis_client: object
) -> None:
    from sessions import SessionService
    from sessions.model import Message
    from workbench.tui.widgets.chat import ChatMessage, ChatView, LoadEarlier

    service = SessionService(redis_client)  # type: ignore[arg-type]
    try:
        session = service.create(repo=str(repo), model=str(model_dir), title="long")
        for i in range(25):
            service.store.append_message(session, Message(role="user", content=f"question {i}"))
            service.store.append_message(session, Message(role="assistant", content=f"**answer** {i}"))
    finally:
        service.close()

    async def scenario() -> None:
        app = make_app(model_dir, repo, tmp_path / "data", rag=False, resume=session.id)
        async with app.run_test(size=SIZE) as pilot:
            screen = main_screen(app)
            chat = screen.query_one(ChatView)
            await wait_for(pilot, lambda: len(chat.query(ChatMessage)) == 20 and chat.query(LoadEarlier))
            assert [m.number for m in chat.query(ChatMessage)] == list(range(31, 51))
            bar = chat.query_one(LoadEarlier)
            for _ in range(4):  # impatient presses: more than there is to load, before any has finished
                bar.post_message(LoadEarlier.Pressed())
            await wait_for(pilot, lambda: not chat.query(LoadEarlier))
            await pilot.pause(0.2)
            assert [m.number for m in chat.query(ChatMessage)] == list(range(1, 51))
            assert app.is_running and screen.query(UserMessage).first().text == "question 0"

    asyncio.run(scenario())


def test_a_pruned_chat_can_load_its_pruned_messages_again(
    model_dir: Path, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workbench.tui.widgets import chat as chat_widgets
    from workbench.tui.widgets.chat import ChatMessage, ChatView, LoadEarlier

    monkeypatch.setattr(chat_widgets, "PRUNE_LINES", 30)  # a small window, so that two turns overflow it
    monkeypatch.setattr(chat_widgets, "KEEP_LINES", 12)

    async def scenario() -> None:
        app = make_app(model_dir, repo, tmp_path / "data", max_tokens=24, rag=False, temperature=0.0)
        async with app.run_test(size=SIZE) as pilot:
            screen = main_screen(app)
            view = screen.query_one(ChatView)
            for n in range(3):
                await send(pilot, app, f"question {n}\n" + "more words\n" * 6)
                await wait_for(pilot, lambda: not screen.busy and screen.turn.done)  # type: ignore[union-attr]
            await wait_for(pilot, lambda: bool(view.query(LoadEarlier)))  # pruned, and said so
            numbers = [m.number for m in view.query(ChatMessage)]
            assert numbers == list(range(numbers[0], 7)) and numbers[0] > 1  # the newest kept, in order
            while view.query(LoadEarlier):
                view.query_one(LoadEarlier).post_message(LoadEarlier.Pressed())
                await pilot.pause(0.1)
            assert [m.number for m in view.query(ChatMessage)] == list(range(1, 7))
            assert view.query(UserMessage).first().text.startswith("question 0")

    asyncio.run(scenario())
