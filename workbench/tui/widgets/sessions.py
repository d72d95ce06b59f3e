"""The sessions sidebar: this repo's sessions (or all), newest first, filtered by a ranked search.

Keys on the list: Enter open, r rename, d delete (asks first), e export, f fork, a this repo / all.
The panel only shows rows and posts what the user asked for; the screen does the work in workers.
"""

from __future__ import annotations

import time
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option


def age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return "now"


class SessionList(OptionList):
    BINDINGS = [
        Binding("r", "act('rename')", "Rename"),
        Binding("d", "act('delete')", "Delete"),
        Binding("e", "act('export')", "Export"),
        Binding("f", "act('fork')", "Fork"),
        Binding("a", "act('toggle_all')", "All repos"),
    ]

    class Action(Message):
        def __init__(self, action: str, session_id: str | None) -> None:
            super().__init__()
            self.action, self.session_id = action, session_id

    def action_act(self, action: str) -> None:
        self.post_message(self.Action(action, self.highlighted_id()))

    def highlighted_id(self) -> str | None:
        if self.highlighted is None:
            return None
        return self.get_option_at_index(self.highlighted).id


class SessionsPanel(Vertical):
    class SearchChanged(Message):
        def __init__(self, query: str) -> None:
            super().__init__()
            self.query = query

    def compose(self) -> ComposeResult:
        yield Static("Sessions · this repo", id="sessions-title")
        yield Input(placeholder="search every message…", id="sessions-search")
        yield SessionList(id="sessions-list")

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.post_message(self.SearchChanged(event.value))

    def show_sessions(self, rows: list[Any], all_repos: bool, current: str | None) -> None:
        """`rows`: SessionInfo objects, or SearchHit objects (with .session, .snippet)."""
        self.query_one("#sessions-title", Static).update(
            f"Sessions · {'all repos' if all_repos else 'this repo'}"
        )
        listing = self.query_one(SessionList)
        keep = listing.highlighted_id()  # the row the user was on stays highlighted after a refresh
        listing.clear_options()
        now = time.time()
        for row in rows:
            info = getattr(row, "session", row)
            mark = "● " if info.id == current else ""
            facts = f"{age(now - info.updated)} · {info.message_count} msgs · {info.id[:8]}"
            label = f"{mark}{_escape(info.title)}\n[dim]{facts}[/]"
            snippet = getattr(row, "snippet", "")
            if snippet:
                label += f"\n[dim italic]{_escape(snippet[:80])}[/]"
            listing.add_option(Option(label, id=info.id))
        if not rows:
            listing.add_option(Option("[dim]no sessions[/]", id=None, disabled=True))
            return
        ids = [getattr(row, "session", row).id for row in rows]
        listing.highlighted = ids.index(keep) if keep in ids else 0


def _escape(text: str) -> str:
    return text.replace("[", r"\[")
