"""The session half of the main screen: the sidebar's list and search, and what its keys ask for (open,
rename, delete, export, fork), each in a worker. MainScreen builds on it; it holds no chat logic."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from textual import on, work
from textual.screen import Screen

from workbench.tui.screens.modals import ConfirmScreen, TextPromptScreen
from workbench.tui.widgets.chat import (
    AssistantMessage,
    ChatMessage,
    ChatView,
    LoadEarlier,
    UserMessage,
    load_earlier_text,
)
from workbench.tui.widgets.context import ContextPanel, warm_report
from workbench.tui.widgets.sessions import SessionList, SessionsPanel
from workbench.tui.widgets.status import StatusBar

if TYPE_CHECKING:
    from sessions.model import Session
    from workbench.tui.app import WorkbenchApp


WINDOW = 20  # messages shown when a session opens; "load earlier" adds this many more


class SessionScreen(Screen[None]):
    session_id: str | None = None
    busy = False  # a turn was submitted and has not ended

    def __init__(self) -> None:
        super().__init__()
        self.session_messages: list[Any] = []  # the open session's messages (for "load earlier")
        self.first_shown = 0  # index of the first message on screen

    @property
    def wb(self) -> WorkbenchApp:
        return self.app  # type: ignore[return-value]

    if TYPE_CHECKING:  # what the chat screen (MainScreen) provides to this half

        async def action_new_session(self) -> None: ...

    @work(thread=True, exclusive=True, group="sessions", exit_on_error=False)
    def refresh_sessions(self, query: str = "") -> None:
        backend = self.wb.backend
        all_repos = self.wb.settings.all_repos
        try:
            rows = backend.search(query, all_repos) if query.strip() else backend.sessions(all_repos)
        except Exception as exc:
            self.app.call_from_thread(self.notify, str(exc), title="Sessions", severity="error")
            return
        panel = self.query_one(SessionsPanel)
        self.app.call_from_thread(panel.show_sessions, rows, all_repos, self.session_id)

    def action_toggle_sessions(self) -> None:
        panel = self.query_one("#sessions")
        panel.display = not panel.display
        self.wb.settings.show_sessions = panel.display
        self.wb.save_settings()
        if panel.display:
            self.refresh_sessions()
            self.query_one(SessionList).focus()

    @on(SessionsPanel.SearchChanged)
    def search_changed(self, event: SessionsPanel.SearchChanged) -> None:
        self.refresh_sessions(event.query)

    @on(SessionList.OptionSelected)
    def open_selected(self, event: SessionList.OptionSelected) -> None:
        if event.option.id:
            self.open_session(event.option.id)

    @work(thread=True, exclusive=True, group="open", exit_on_error=False)
    def open_session(self, session_id: str) -> None:
        try:
            session = self.wb.backend.open(session_id)
        except Exception as exc:
            self.app.call_from_thread(self.notify, str(exc), title="Cannot open", severity="error")
            return
        self.app.call_from_thread(self._show_session, session)
        self.app.call_from_thread(self.refresh_sessions)

    # -- the session on screen: its last WINDOW messages, earlier ones on demand -------------------

    async def _show_session(self, session: Session) -> None:
        chat = self.query_one(ChatView)
        await chat.remove_children()
        self.session_id = session.id
        self.session_messages = list(session.messages)
        self.first_shown = max(0, len(self.session_messages) - WINDOW)
        if self.first_shown:
            await chat.mount(LoadEarlier(self.first_shown))
        await chat.mount_all(self._widgets_for(self.first_shown, len(self.session_messages)))
        chat.following = True
        chat.to_bottom()
        cached = len(session.history)
        self.query_one(StatusBar).change(model=session.model, context_used=cached)
        self.sub_title = session.title
        if session.messages:
            self.notify(f"{session.title}: {len(session.messages)} messages", title="Resumed")
        if cached:
            self.warm(session.id, cached)

    def _widgets_for(self, start: int, end: int) -> list[ChatMessage]:
        widgets: list[ChatMessage] = []
        for index in range(start, end):
            message = self.session_messages[index]
            if message.role == "user":
                widgets.append(UserMessage(message.content, index + 1))
            elif message.role == "assistant":
                reply = AssistantMessage(message.content, message.reasoning, index + 1)
                if message.status == "interrupted":
                    reply.add_class("interrupted")
                widgets.append(reply)
        return widgets

    @on(LoadEarlier.Pressed)
    async def load_earlier(self, event: LoadEarlier.Pressed) -> None:
        event.stop()
        chat = self.query_one(ChatView)
        bars = chat.query(LoadEarlier)
        if not bars or not self.first_shown:  # a press that arrived after the last load
            return
        bar, start = bars.first(), max(0, self.first_shown - WINDOW)
        widgets = self._widgets_for(start, self.first_shown)
        self.first_shown = start
        await chat.mount_all(widgets, after=bar)
        if start:
            bar.update(load_earlier_text(start))
        else:
            await bar.remove()

    @work(thread=True, exclusive=True, group="window", exit_on_error=False)
    def reload_window(self, session_id: str) -> None:
        """After pruning: the session as recorded, so "load earlier" can bring the pruned messages back."""
        session = self.wb.backend.show(session_id)
        self.app.call_from_thread(self._after_prune, session)

    async def _after_prune(self, session: Session) -> None:
        chat = self.query_one(ChatView)
        shown = [m.number for m in chat.query(ChatMessage) if m.number]
        if session.id != self.session_id or not shown:
            return
        self.session_messages, self.first_shown = list(session.messages), min(shown) - 1
        bars = chat.query(LoadEarlier)
        if bars:
            bars.first().update(load_earlier_text(self.first_shown))
        elif self.first_shown:
            await chat.mount(LoadEarlier(self.first_shown), before=0)

    @work(thread=True, exclusive=True, group="warm", exit_on_error=False)
    def warm(self, session_id: str, tokens: int) -> None:
        """Restore the opened session's KV history while the user reads and types (sessions/warm.py)."""
        bar = self.query_one(StatusBar)
        if not self.busy:
            self.app.call_from_thread(bar.change, activity=f"restoring {tokens:,} tokens")
        try:
            report = self.wb.backend.warm(session_id)
        except Exception as exc:  # the next turn restores (or recomputes) it instead: say so, go on
            self.app.call_from_thread(self.notify, f"KV history not restored now: {exc}", title="Resume",
                                      severity="warning")  # fmt: skip
            report = None
        self.app.call_from_thread(self._warmed, session_id, report)

    def _warmed(self, session_id: str, report: Any) -> None:
        if not self.busy:
            self.query_one(StatusBar).change(activity="ready")
        if report is None or session_id != self.session_id:
            return
        if report.context_size:
            self.query_one(StatusBar).change(context_size=report.context_size)
        self.query_one(ContextPanel).note(warm_report(report))
        text = report.describe()
        severity = "warning" if report.skipped else "information"
        self.notify(text[0].upper() + text[1:], title="KV cache", severity=severity)

    @on(SessionList.Action)
    def session_action(self, event: SessionList.Action) -> None:
        sid = event.session_id
        if event.action == "toggle_all":
            self.wb.settings.all_repos = not self.wb.settings.all_repos
            self.wb.save_settings()
            self.refresh_sessions()
        elif sid is None:
            return
        elif event.action == "delete":
            self.app.push_screen(
                ConfirmScreen(f"Delete session {sid[:8]}? Its messages cannot be recovered."),
                lambda yes: self.session_job("delete", sid) if yes else None,
            )
        elif event.action == "rename":
            self.app.push_screen(
                TextPromptScreen("New title:"),
                lambda title: self.session_job("rename", sid, title) if title else None,
            )
        else:
            self.session_job(event.action, sid)

    @work(thread=True, group="session-job", exit_on_error=False)
    def session_job(self, action: str, session_id: str, argument: Any = None) -> None:
        backend = self.wb.backend
        try:
            if action == "delete":
                backend.delete(session_id)
                message = f"Deleted session {session_id[:8]}"
                if session_id == self.session_id:
                    self.app.call_from_thread(self.action_new_session)
            elif action == "rename":
                message = f"Renamed to {backend.rename(session_id, argument).title!r}"
            elif action == "export":
                message = f"Exported to {backend.export(session_id, backend.options.repo)}"
            elif action == "fork":
                child = backend.fork(session_id, argument)
                message = f"Forked into {child.id[:8]} ({child.message_count} messages)"
                self.app.call_from_thread(self.open_session, child.id)
            else:
                return
        except Exception as exc:
            self.app.call_from_thread(self.notify, str(exc), title=action.title(), severity="error")
            return
        self.app.call_from_thread(self.notify, message)
        self.app.call_from_thread(self.refresh_sessions)

    @on(ChatMessage.ForkRequested)
    def fork_at(self, event: ChatMessage.ForkRequested) -> None:
        if self.session_id:
            self.session_job("fork", self.session_id, event.number)

    @on(ChatMessage.CopyRequested)
    def copy_message(self, event: ChatMessage.CopyRequested) -> None:
        self.wb.copy_text(event.text, event.what)
