"""The session half of the main screen: the sidebar's list and search, and what its keys ask for (open,
rename, delete, export, fork), each in a worker. MainScreen builds on it; it holds no chat logic."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from textual import on, work
from textual.screen import Screen

from workbench.tui.screens.modals import ConfirmScreen, TextPromptScreen
from workbench.tui.widgets.chat import ChatMessage
from workbench.tui.widgets.context import ContextPanel, warm_report
from workbench.tui.widgets.sessions import SessionList, SessionsPanel
from workbench.tui.widgets.status import StatusBar

if TYPE_CHECKING:
    from sessions.model import Session
    from workbench.tui.app import WorkbenchApp


class SessionScreen(Screen[None]):
    session_id: str | None = None
    busy = False  # a turn was submitted and has not ended

    @property
    def wb(self) -> WorkbenchApp:
        return self.app  # type: ignore[return-value]

    if TYPE_CHECKING:  # what the chat screen (MainScreen) provides to this half

        async def _show_session(self, session: Session) -> None: ...

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
