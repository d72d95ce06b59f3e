"""The context panel (retrieved code, the cache report) and what the status line says of progress.

The chunks are a list: Enter or a click on one posts ChunkChosen, and the screen opens it
(screens/chunk.py) with syntax highlighting.
"""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option


def progress_bar(done: int, total: int, width: int = 10) -> str:
    """A text progress bar for the status line: `▰▰▰▱▱▱▱▱▱▱ 30%`."""
    fraction = min(1.0, done / total) if total else 0.0
    filled = round(fraction * width)
    return "▰" * filled + "▱" * (width - filled) + f" {fraction:.0%}"


EMPTY = "No turn yet: retrieved code and the cache report show here."


class ContextPanel(Vertical):
    class ChunkChosen(Message):
        def __init__(self, chunk: Any) -> None:
            super().__init__()
            self.chunk = chunk  # a sessions.events.RetrievedChunk

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.chunks: list[Any] = []
        self.retrieval: Any = None
        self.cache: Any = None

    def compose(self) -> ComposeResult:
        yield Static("[b]Retrieved code[/b]", id="context-title")
        yield OptionList(id="context-chunks")
        yield Static(f"[dim]{EMPTY}[/]", id="context-report")

    def show(self, retrieval: Any, cache: Any = None) -> None:
        """The turn's retrieval (None: keep the last one shown) and, once known, its cache report."""
        self.cache = cache
        if retrieval is not None and retrieval is not self.retrieval:
            self.retrieval = retrieval
            self.chunks = list(retrieval.chunks)
            chunks = self.query_one("#context-chunks", OptionList)
            chunks.clear_options()
            chunks.add_options([Option(chunk_label(c), id=str(i)) for i, c in enumerate(self.chunks)])
            chunks.display = bool(self.chunks)
        self.query_one("#context-report", Static).update(context_report(self.retrieval, cache))

    def prefill(self, done: int, total: int) -> None:
        """The turn's prefill as it runs, under its cache report."""
        line = f"prefill {progress_bar(done, total)} ({done:,} of {total:,} tokens)"
        report = context_report(self.retrieval, self.cache)
        self.query_one("#context-report", Static).update(f"{report}\n{line}")

    def note(self, text: str) -> None:
        """Replace the report under the chunk list (the KV restore of a session just opened)."""
        self.query_one("#context-report", Static).update(text)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id is not None:
            self.post_message(self.ChunkChosen(self.chunks[int(event.option.id)]))


def chunk_label(chunk: Any) -> str:
    symbol = f" {chunk.symbol}" if chunk.symbol else ""
    where = f"{chunk.path}:{chunk.start_line}-{chunk.end_line}{symbol}"
    return f"{where}\n[dim]{chunk.score:.2f} · {chunk.tokens} tok[/]"


def context_report(retrieval: Any, cache: Any) -> str:
    """The panel's text under the chunk list: what retrieval found (or why not) and the cache report."""
    lines = []
    if retrieval is None:
        lines.append("[dim]none[/]")
    elif retrieval.skipped:
        lines.append(f"[dim]skipped: {retrieval.skipped}[/]")
    else:
        found = f"{len(retrieval.chunks)} chunks, {retrieval.tokens:,} of {retrieval.budget:,} tokens"
        lines.append(f"[dim]{found} (Enter opens one)[/]")
    if cache is not None:
        tiers = ", ".join(f"{tier} {n:,}" for tier, n in cache.by_tier.items()) or "none"
        lines += [
            "",
            "[b]Cache[/b]",
            f"prompt {cache.prompt_tokens:,} · reused {cache.cached_tokens:,}"
            f" · prefilled {cache.prefill_tokens:,}",
            f"from: {tiers} · restore {cache.restore_s:.2f} s",
        ]
        bust = getattr(cache, "cache_bust", None)
        if bust:  # the prompt stopped extending the cached history: where, why, and what it cost
            where = f"message {bust['message_index'] + 1}" if bust.get("message_index") is not None else "?"
            lines.append(
                f"[b]cache bust[/b] at token {bust['token_index']:,} ({where}): "
                f"{bust['reason'].replace('_', ' ')}, {bust['wasted_tokens']:,} tokens prefilled again"
            )
    return "\n".join(lines)


def warm_report(report: Any) -> str:
    """The panel's text after a session was opened, before its first turn here."""
    return f"[b]Cache[/b]\n{report.describe()}\n[dim]the next turn prefills only the new message[/]"
