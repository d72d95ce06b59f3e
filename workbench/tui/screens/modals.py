"""Small modal screens: confirm, ask for a line of text, and the first-run screen without a model."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Static


class ConfirmScreen(ModalScreen[bool]):
    BINDINGS = [Binding("escape", "dismiss(False)", "Cancel"), Binding("y", "dismiss(True)", "Yes")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.question, classes="dialog-text")
            yield Button("Yes (y)", id="yes", variant="error")
            yield Button("No (Esc)", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class TextPromptScreen(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, question: str, value: str = "") -> None:
        super().__init__()
        self.question, self.value = question, value

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.question, classes="dialog-text")
            yield Input(self.value, id="answer")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)


class NoModelScreen(ModalScreen[str | None]):
    """First run without a model: how to get one; pulls the default where the Hub is reachable."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Close")]

    def __init__(self, model: str, problem: str) -> None:
        super().__init__()
        self.model, self.problem = model, problem

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Static(
                f"[b]No model to answer with yet[/b]\n\n{self.problem}\n\n"
                f"Get one:\n  • [b]workbench models pull {self.model}[/b] (needs the Hugging Face Hub)\n"
                "  • or start with [b]workbench --model DIR[/b] for a model directory you have\n\n"
                "You can still browse sessions and the index meanwhile.",
                classes="dialog-text",
            )
            yield Button(f"Pull {self.model} now", id="pull", variant="primary")
            yield Button("Close (Esc)", id="close")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss("pull" if event.button.id == "pull" else None)
