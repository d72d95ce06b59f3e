"""The prompt: multi-line, Enter sends, Shift+Enter / Ctrl+J add a newline, Up/Down walk the history.

Textual's TextArea has no submit and binds Enter to a newline, so Enter is a priority binding here (as
toad does). A paste is inserted as text (never sent), however many lines it has.
"""

from __future__ import annotations

from textual.binding import Binding
from textual.message import Message
from textual.widgets import TextArea

from workbench.tui.history import PromptHistory


class PromptInput(TextArea):
    BINDINGS = [
        Binding("enter", "submit", "Send", priority=True),
        Binding("shift+enter,ctrl+j", "newline", "Newline", show=False, priority=True),
        Binding("up", "history_previous", "History", show=False),
        Binding("down", "history_next", "History", show=False),
    ]

    class Submitted(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(self, history: PromptHistory | None = None, id: str | None = None) -> None:
        super().__init__(
            id=id,
            soft_wrap=True,
            show_line_numbers=False,
            tab_behavior="focus",
            placeholder="Ask about this repository…  (Enter sends, Shift+Enter newline, Ctrl+P commands)",
            compact=True,
            highlight_cursor_line=False,
        )
        self.prompt_history = history if history is not None else PromptHistory()

    def action_submit(self) -> None:
        text = self.text
        if not text.strip():
            return
        self.post_message(self.Submitted(text))
        self.prompt_history.add(text)
        self.load_text("")

    def action_newline(self) -> None:
        self.insert("\n")

    def action_history_previous(self) -> None:
        if self.cursor_location[0] > 0:  # not on the first row: move the cursor as usual
            self.action_cursor_up()
            return
        entry = self.prompt_history.previous(self.text)
        if entry is not None:
            self._show(entry)

    def action_history_next(self) -> None:
        if self.cursor_location[0] < self.document.line_count - 1:
            self.action_cursor_down()
            return
        entry = self.prompt_history.following()
        if entry is not None:
            self._show(entry)

    def _show(self, text: str) -> None:
        self.load_text(text)
        self.move_cursor(self.document.end)
