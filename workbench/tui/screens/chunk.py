"""A retrieved chunk opened from the context panel: its file's lines with syntax highlighting, the
chunk's own lines marked, a few lines of surrounding code, and a key to copy it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

AROUND = 6  # lines shown before and after the chunk
MAX_BYTES = 2_000_000  # a file larger than this is not read into the viewer


def read_chunk(repo: str, chunk: Any) -> tuple[str, int, str]:
    """(code, first line number, path) of the chunk's lines with AROUND lines on each side.

    The path comes from the index, so it is confined to the repository like every tool path."""
    root = Path(repo).resolve()
    path = (root / chunk.path).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"{chunk.path} is outside the repository {root}")
    if path.stat().st_size > MAX_BYTES:
        raise ValueError(f"{chunk.path} is over {MAX_BYTES // 1_000_000} MB: open it in an editor")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    first = max(1, chunk.start_line - AROUND)
    last = min(len(lines), chunk.end_line + AROUND)
    return "\n".join(lines[first - 1 : last]), first, str(path)


class ChunkScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape", "dismiss(None)", "Close"),
        Binding("q", "dismiss(None)", "Close", show=False),
        Binding("c", "copy", "Copy chunk"),
    ]

    def __init__(self, repo: str, chunk: Any) -> None:
        super().__init__()
        self.repo, self.chunk = repo, chunk
        self.code = ""  # the chunk's own lines, once read (what `c` copies)

    def compose(self) -> ComposeResult:
        c = self.chunk
        symbol = f" · {c.symbol}" if c.symbol else ""
        with Vertical(classes="dialog wide", id="chunk-dialog"):
            yield Static(f"[b]{c.path}[/b]:{c.start_line}-{c.end_line}{symbol}  [dim]score {c.score:.2f} · "
                         f"{c.tokens} tokens · Esc closes, c copies[/]", classes="dialog-text")  # fmt: skip
            with VerticalScroll(id="chunk-scroll"):
                yield Static("[dim]reading…[/]", id="chunk-code")

    def on_mount(self) -> None:
        self.load()

    @work(thread=True, exit_on_error=False)
    def load(self) -> None:
        try:
            code, first, path = read_chunk(self.repo, self.chunk)
        except (OSError, ValueError) as exc:
            self.app.call_from_thread(self._show_error, str(exc))
            return
        self.app.call_from_thread(self._show, code, first, path)

    def _show(self, code: str, first: int, path: str) -> None:
        from rich.syntax import Syntax

        c = self.chunk
        lines = code.splitlines()
        self.code = "\n".join(lines[c.start_line - first : c.end_line - first + 1])
        marked = set(range(c.start_line, c.end_line + 1))
        lexer = Syntax.guess_lexer(path, code)
        syntax = Syntax(code, lexer, line_numbers=True, start_line=first, highlight_lines=marked,
                        theme="ansi_dark", word_wrap=False)  # fmt: skip
        self.query_one("#chunk-code", Static).update(syntax)

    def _show_error(self, message: str) -> None:
        self.query_one("#chunk-code", Static).update(f"[red]cannot open {self.chunk.path}: {message}[/]")

    def action_copy(self) -> None:
        if self.code:
            self.app.copy_text(self.code, f"{self.chunk.path}:{self.chunk.start_line}-{self.chunk.end_line}")  # type: ignore[attr-defined]
