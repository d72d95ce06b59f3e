"""Approving an agent's changing tool call: the diff or the command, then approve / reject / always.

Keys are ignored for the first IGNORE_S after the screen opens, so a keystroke meant for the prompt
(typing "y..." just as the modal appears) does not approve anything (mistral-vibe does the same).
The screen answers a turn's `approval` event (sessions.events.ApprovalNeeded) through `Turn.answer`;
the service waits for it off the engine thread, and a cancelled turn rejects it by itself.
"""

from __future__ import annotations

import time
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

IGNORE_S = 0.5


class ApprovalScreen(ModalScreen[str]):
    BINDINGS = [
        Binding("y", "answer('approve')", "Approve"),
        Binding("n,escape", "answer('reject')", "Reject"),
        Binding("a", "answer('always')", "Always (this session)"),
    ]

    def __init__(self, request: Any) -> None:
        super().__init__()
        self.request = request
        self.opened = time.monotonic()

    def compose(self) -> ComposeResult:
        from rich.syntax import Syntax

        preview = self.request.preview
        lexer = "diff" if preview.startswith(("---", "@@")) else "bash"
        with Vertical(classes="dialog wide", id="approval"):
            yield Static(f"[b]{self.request.title}[/b]  [dim]({self.request.tool}, {self.request.kind})[/]")
            with VerticalScroll(id="approval-preview"):
                yield Static(Syntax(preview, lexer, word_wrap=True, theme="ansi_dark"))
            yield Static("[b]y[/b] approve   [b]n[/b] / Esc reject   [b]a[/b] always for this session")

    def action_answer(self, decision: str) -> None:
        if time.monotonic() - self.opened < IGNORE_S:
            return
        self.dismiss(decision)


def ask(app: Any, turn: Any, event: Any) -> None:
    """Open the screen for a turn's `approval` event; its answer (Esc: reject) goes back to the turn."""
    app.push_screen(ApprovalScreen(event), lambda decision: turn.answer(event.call_id, decision or "reject"))
