"""The conversation: user and assistant messages in a scrolling column that follows the bottom.

Following: while streaming, the view stays at the bottom until the user scrolls up, and follows again
once they scroll back to the bottom (or press End). Textual 8.2.8's `anchor()` does not re-engage by
itself while content streams (Textual issue #6677), so the view tracks the user's intent itself: a move
up of `scroll_y` is the user leaving, reaching `max_scroll_y` is the user coming back.

Streaming: deltas are buffered and written to the Markdown stream at most every FLUSH_S, because every
write re-lays out and re-highlights the growing block (measured: writing every fragment of a 30 tok/s
stream costs 71% of a core, every 100 ms 40%, every 250 ms 19%; the model needs those cores).

Pruning: past PRUNE_LINES of content the oldest messages are removed down to KEEP_LINES (toad and
mistral-vibe keep ~1,000–1,500 lines); a "load earlier" bar brings them back on demand.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Static

if TYPE_CHECKING:
    from textual.widgets.markdown import MarkdownStream

FLUSH_S = 0.2
PRUNE_LINES = 1500
KEEP_LINES = 1000
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)


def code_blocks(markdown: str) -> list[str]:
    """The fenced code blocks of a Markdown text, in order."""
    return [m.group(1) for m in FENCE.finditer(markdown)]


class ChatMessage(Vertical, can_focus=True):
    """One message; focusable so it can be copied (c) or forked at (f)."""

    BINDINGS = [
        Binding("c", "copy", "Copy message"),
        Binding("f", "fork", "Fork here"),
    ]

    class CopyRequested(Message):
        def __init__(self, text: str, what: str) -> None:
            super().__init__()
            self.text, self.what = text, what

    class ForkRequested(Message):
        def __init__(self, number: int) -> None:
            super().__init__()
            self.number = number  # 1-based: the fork keeps messages 1..number

    def __init__(self, role: str, text: str, number: int | None = None) -> None:
        super().__init__(classes=f"message {role}")
        self.role = role
        self.text = text
        self.number = number  # 1-based number in the session (None until recorded)

    def action_copy(self) -> None:
        self.post_message(self.CopyRequested(self.text, f"message {self.number or ''}".strip()))

    def action_fork(self) -> None:
        if self.number is None:
            self.notify("This message is not recorded yet: wait for the reply to finish", severity="warning")
            return
        self.post_message(self.ForkRequested(self.number))


class UserMessage(ChatMessage):
    def __init__(self, text: str, number: int | None = None) -> None:
        super().__init__("user", text, number)

    def compose(self) -> ComposeResult:
        yield Static(self.text, classes="user-text", markup=False)


class AssistantMessage(ChatMessage):
    """A reply: reasoning (collapsed), the answer as streamed Markdown, and a footer with its figures."""

    def __init__(self, text: str = "", reasoning: str = "", number: int | None = None) -> None:
        super().__init__("assistant", text, number)
        self.reasoning = reasoning
        self._pending: dict[str, list[str]] = {"answer": [], "reasoning": []}
        self._streams: dict[str, MarkdownStream] = {}
        self._last_flush = 0.0
        self.finished = False

    def compose(self) -> ComposeResult:
        # Imported here: Markdown (markdown-it, Pygments) is heavy and not needed for the first frame.
        from textual.widgets import Collapsible, Markdown

        # A reply from the history is drawn once, as one Rich renderable: Textual's Markdown widget
        # (a widget per block, needed to stream) costs ~40 ms a message to mount against ~4 ms, and a
        # long session opens and loads earlier messages twenty at a time (bench/tui_live_bench.py).
        recorded = bool(self.text or self.reasoning)
        with Collapsible(title="reasoning", collapsed=True, classes="reasoning") as box:
            box.display = bool(self.reasoning)
            if recorded:
                yield Static(self._rendered(self.reasoning), classes="reasoning-text")
            else:
                yield Markdown(self.reasoning, classes="reasoning-text")
        yield Static(self._rendered(self.text), classes="answer") if recorded else Markdown(classes="answer")
        yield Static("", classes="reply-footer")

    def _rendered(self, text: str) -> object:
        from rich.markdown import Markdown as RichMarkdown

        dark = self.app.current_theme.dark if self.app.current_theme else True
        return RichMarkdown(text, code_theme="ansi_dark" if dark else "ansi_light")

    # -- streaming -------------------------------------------------------------------------------

    def add_delta(self, text: str, kind: str = "answer") -> None:
        self._pending["reasoning" if kind == "reasoning" else "answer"].append(text)
        if kind == "reasoning":
            self.reasoning += text
            self.query_one(".reasoning").display = True
        else:
            self.text += text

    def due(self, now: float) -> bool:
        return any(self._pending.values()) and now - self._last_flush >= FLUSH_S

    async def flush(self) -> None:
        """Write what was buffered since the last flush: one Markdown write per kind."""
        self._last_flush = time.monotonic()
        for kind, selector in (("reasoning", ".reasoning-text"), ("answer", ".answer")):
            parts = self._pending[kind]
            if not parts:
                continue
            self._pending[kind] = []
            stream = self._streams.get(kind)
            if stream is None:
                from textual.widgets import Markdown

                stream = self._streams[kind] = Markdown.get_stream(self.query_one(selector, Markdown))
            await stream.write("".join(parts))

    async def finish(self, footer: str, number: int | None, interrupted: bool = False) -> None:
        await self.flush()
        for stream in self._streams.values():
            await stream.stop()
        self._streams.clear()
        self.finished = True
        self.number = number
        if interrupted:
            self.add_class("interrupted")
        self.query_one(".reply-footer", Static).update(footer)


def load_earlier_text(hidden: int) -> str:
    return f"▲ {hidden} earlier message{'s' * (hidden != 1)} — Enter or click to load"


class LoadEarlier(Static, can_focus=True):
    """The bar at the top of a pruned or windowed chat: select it to show earlier messages."""

    BINDINGS = [Binding("enter", "load", "Load earlier")]

    class Pressed(Message):
        pass

    def __init__(self, hidden: int) -> None:
        super().__init__(load_earlier_text(hidden))
        self.hidden = hidden

    def action_load(self) -> None:
        self.post_message(self.Pressed())

    def on_click(self) -> None:
        self.post_message(self.Pressed())


class ChatView(VerticalScroll):
    BINDINGS = [Binding("end", "follow", "Follow", show=False)]

    following: reactive[bool] = reactive(True)

    def __init__(self, id: str | None = None) -> None:
        super().__init__(id=id)
        self._programmatic = False

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        if self._programmatic:
            return
        if new < old - 0.5:
            self.following = False
        elif new >= self.max_scroll_y - 0.5:
            self.following = True

    def action_follow(self) -> None:
        self.following = True
        self.to_bottom()

    def to_bottom(self) -> None:
        if not self.following:
            return
        self._programmatic = True
        try:
            self.scroll_end(animate=False, immediate=True)
        finally:
            self._programmatic = False

    def messages(self) -> list[ChatMessage]:
        return list(self.query(ChatMessage))

    def overflow_lines(self) -> int:
        return self.virtual_size.height - PRUNE_LINES

    async def prune(self) -> int:
        """Remove the oldest messages while the content is over PRUNE_LINES; how many went."""
        if self.virtual_size.height <= PRUNE_LINES:
            return 0
        excess = self.virtual_size.height - KEEP_LINES
        removed: list[Widget] = []
        for message in self.messages()[:-2]:  # never the exchange in progress
            if excess <= 0:
                break
            excess -= message.outer_size.height
            removed.append(message)
        if removed:
            self._programmatic = True
            try:
                await self.remove_children(removed)
            finally:
                self._programmatic = False
        return len(removed)


class ToolCallView(Vertical):
    """One tool call of an agent turn: collapsed once it succeeds, expanded when it fails."""

    def __init__(self, call_id: str, tool: str, arguments: dict[str, object]) -> None:
        super().__init__(classes="tool-call")
        self.call_id, self.tool = call_id, tool
        shown = ", ".join(f"{k}={v!r}" for k, v in arguments.items())
        self.signature = f"{tool}({shown[:100]})"

    def compose(self) -> ComposeResult:
        from textual.widgets import Collapsible

        with Collapsible(title=f"⋯ {self.signature}", collapsed=True):
            yield Static("running…", classes="tool-output", markup=False)

    def show_result(self, ok: bool, summary: str, result: str, approval: dict[str, object] | None,
                    seconds: float) -> None:  # fmt: skip
        from textual.widgets import Collapsible

        box = self.query_one(Collapsible)
        by = f" · {approval.get('by')}" if approval else ""
        box.title = f"{'✓' if ok else '✗'} {self.signature} · {summary[:60]} · {seconds * 1000:.0f} ms{by}"
        self.query_one(".tool-output", Static).update(result[:4000])
        box.collapsed = ok
        self.set_class(not ok, "failed")


def reply_footer(result: Any) -> str:
    """The line under a finished reply: how it ended, its speed, its prompt and what was cached."""
    tokens, timings = result.tokens or {}, result.timings or {}
    parts = [result.finish_reason or "done"]
    if result.finish_reason == "cancelled":
        parts = ["interrupted (Esc): partial reply kept"]
    if timings.get("decode_tok_s"):
        parts.append(f"{timings['decode_tok_s']:.1f} tok/s")
    if tokens.get("prompt"):
        parts.append(f"prompt {tokens['prompt']:,} ({tokens.get('cached', 0):,} cached)")
    return " · ".join(parts)
