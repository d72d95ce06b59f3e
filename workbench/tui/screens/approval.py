"""Approving an agent's changing tool call: the diff or the command, then approve / reject / always.

Keys are ignored for the first IGNORE_S after the screen opens, so a keystroke meant for the prompt
(typing "y..." just as the modal appears) does not approve anything (mistral-vibe does the same).
`TuiApprover` is the agent.policy.Approver: it is called on the engine thread and waits for the modal.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

if TYPE_CHECKING:
    from textual.app import App

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


class TuiApprover:
    """Asks the user through ApprovalScreen; runs on the engine thread, blocking until they answer."""

    def __init__(self, app: App[Any]) -> None:
        self.app = app

    def __call__(self, request: Any) -> Any:
        from agent.policy import Decision

        answered = threading.Event()
        answer: list[str] = []
        screen = ApprovalScreen(request)

        def done(decision: str | None) -> None:
            answer.append(decision or "reject")
            answered.set()

        self.app.call_from_thread(self.app.push_screen, screen, done)
        while not answered.wait(0.1):
            if request.cancel.is_set():  # Esc on the turn: close the question, refuse the call
                self.app.call_from_thread(screen.dismiss, "reject")
                answered.wait(2)
                return Decision.REJECT
        return Decision(answer[0])
