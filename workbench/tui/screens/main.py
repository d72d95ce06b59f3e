"""The main screen: sessions sidebar, the chat, the context panel, the prompt and the status bar.

It turns the session service's events into widgets. Every call that may block (Redis, the model, the
index) runs in a worker; a turn is followed with `async for event in turn.events_async()`, which never
blocks the event loop.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Static

from workbench.tui.backend import IndexState
from workbench.tui.screens.approval import ApprovalScreen, ask
from workbench.tui.screens.modals import NoModelScreen, TextPromptScreen
from workbench.tui.screens.sessions_base import SessionScreen
from workbench.tui.widgets.chat import (
    AssistantMessage,
    ChatView,
    ToolCallView,
    UserMessage,
    reply_footer,
)
from workbench.tui.widgets.context import ContextPanel, progress_bar
from workbench.tui.widgets.prompt import PromptInput
from workbench.tui.widgets.sessions import SessionsPanel
from workbench.tui.widgets.status import StatusBar, index_text, numerics_text

if TYPE_CHECKING:
    from sessions.turn import Turn

REDIS_POLL_S = 5.0  # how often the status bar checks that Redis answers


class MainScreen(SessionScreen):
    """Workers here run with exit_on_error=False: a failure is reported by `on_worker_state_changed` as a
    notification, never a traceback; one that outlives the screen (the app is quitting) is dropped."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel reply", priority=True),
        Binding("ctrl+n", "new_session", "New"),
        Binding("ctrl+o", "toggle_sessions", "Sessions"),
        Binding("ctrl+l", "toggle_context", "Context"),
        Binding("ctrl+r", "copy_reply", "Copy reply"),
        Binding("ctrl+b", "copy_block", "Copy code"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.session_id: str | None = None
        self.turn: Turn | None = None
        self.queue: list[str] = []
        self.busy = False  # a turn was submitted and has not ended
        self.tool_views: dict[str, Any] = {}  # call id -> the chat's ToolCallView awaiting its result
        self.policies: dict[str, Any] = {}  # session id -> agent.policy.Policy (its "always" grants)
        self.rag: bool | None = None
        self.thinking: bool | None = None

    def compose(self) -> ComposeResult:
        with Horizontal(id="body"):
            yield SessionsPanel(id="sessions")
            with Vertical(id="main"):
                yield ChatView(id="chat")
                yield Static("", id="queue")
                yield PromptInput(self.wb.history, id="prompt")
            yield ContextPanel(id="context")
        yield StatusBar(id="status")
        yield Footer()

    def on_worker_state_changed(self, event: Any) -> None:
        from textual.worker import WorkerState

        if event.state == WorkerState.ERROR and self.is_attached:
            if event.worker.group == "turn":
                self.busy = False  # the next prompt can go
            error = event.worker.error
            self.notify(f"{type(error).__name__}: {error}", title=event.worker.name, severity="error")

    def on_mount(self) -> None:
        settings = self.wb.settings
        self.query_one("#sessions").display = settings.show_sessions
        self.query_one("#context").display = settings.show_context
        self.query_one(PromptInput).focus()
        # After the first frame: the worker's imports (redis, the engine) would compete for the GIL.
        self.call_after_refresh(self.connect)

    # -- start-up (a worker: the first frame is already painted) -----------------------------------

    @work(thread=True, exclusive=True, group="connect", exit_on_error=False)
    def connect(self) -> None:
        backend = self.wb.backend
        bar = self.query_one(StatusBar)
        model = backend.model_name()
        self.app.call_from_thread(bar.change, model=model, activity="connecting")
        backend.connect()
        self.app.call_from_thread(bar.change, redis=f"redis {backend.redis_state()}", activity="ready")
        self.app.call_from_thread(self.set_interval, REDIS_POLL_S, self.poll_redis)
        problem = backend.model_problem(model)
        if problem:
            self.app.call_from_thread(self._no_model, model, problem)
        try:
            to_open = backend.session_to_open()
        except Exception as exc:  # a bad --resume id: say so, start a new session instead
            self.app.call_from_thread(self.notify, str(exc), title="Cannot resume", severity="error")
            to_open = None
        if to_open:
            self.open_session(to_open)
        self.app.call_from_thread(self.refresh_sessions)
        if backend.options.watch_index:
            backend.start_index(lambda state: self.app.call_from_thread(self._index_state, state))
        else:
            self.app.call_from_thread(self.query_one(StatusBar).change, index="index not watched")

    @work(thread=True, exclusive=True, group="redis-poll", exit_on_error=False)
    def poll_redis(self) -> None:
        self.app.call_from_thread(self._redis_state, self.wb.backend.redis_state())

    def _redis_state(self, state: str) -> None:
        bar = self.query_one(StatusBar)
        was, bar.status.redis = bar.status.redis, f"redis {state}"
        bar.change()
        if was.startswith("redis ok") and state.startswith("down"):
            self.notify(f"Redis {state}: sessions are safe on disk; turns fail until it is back",
                        title="Redis", severity="error")  # fmt: skip
        elif was.startswith("redis down") and state.startswith("ok"):
            self.notify("Redis is reachable again", title="Redis")

    def _no_model(self, model: str, problem: str) -> None:
        def chosen(answer: str | None) -> None:
            if answer == "pull":
                self.pull_model(model)

        self.app.push_screen(NoModelScreen(model, problem), chosen)

    @work(thread=True, group="pull", exit_on_error=False)
    def pull_model(self, model: str) -> None:
        bar = self.query_one(StatusBar)
        self.app.call_from_thread(bar.change, activity=f"pulling {model}")

        def progress(done: int, total: int) -> None:
            shown = f"{progress_bar(done, total)} of {total / 2**30:.2f} GiB" if total else ""
            self.app.call_from_thread(bar.change, activity=f"pulling {model} {shown}")

        try:
            path = self.wb.backend.pull_model(model, progress)
        except Exception as exc:
            self.app.call_from_thread(self.notify, str(exc), title="Pull failed", severity="error")
            self.app.call_from_thread(self.query_one(StatusBar).change, activity="no model")
            return
        self.app.call_from_thread(self.notify, f"{model} is in {path}", title="Model ready")
        self.app.call_from_thread(self.query_one(StatusBar).change, activity="ready")

    def _index_state(self, state: IndexState) -> None:
        if state.state == "off":
            self.notify(state.detail, title="Index", severity="warning")
        self.query_one(StatusBar).change(index=index_text(state))

    @on(ContextPanel.ChunkChosen)
    def open_chunk(self, event: ContextPanel.ChunkChosen) -> None:
        from workbench.tui.screens.chunk import ChunkScreen

        self.app.push_screen(ChunkScreen(self.wb.backend.options.repo, event.chunk))

    # -- turns --------------------------------------------------------------------------------------

    @on(PromptInput.Submitted)
    def submitted(self, event: PromptInput.Submitted) -> None:
        if self.busy:
            self.queue.append(event.text)
            self._show_queue()
            return
        self.busy = True  # set here, not in the worker: a second Enter must queue, not start a turn
        self.run_turn(event.text)

    def _show_queue(self) -> None:
        queue = self.query_one("#queue", Static)
        queue.display = bool(self.queue)
        queue.update(f"[dim]queued ({len(self.queue)}): {self.queue[0][:60]!r}…[/]" if self.queue else "")

    @work(exclusive=True, group="turn", exit_on_error=False)
    async def run_turn(self, prompt: str) -> None:
        chat = self.query_one(ChatView)
        bar = self.query_one(StatusBar)
        chat.following = True
        asked = UserMessage(prompt)
        await chat.mount(asked)
        reply = AssistantMessage()
        await chat.mount(reply)
        chat.to_bottom()
        options = self.wb.backend.turn_options(self.rag, self.thinking, self._policy())
        turn = self.turn = self.wb.backend.start_turn(self.session_id, prompt, options)
        first_token = 0.0
        tokens = 0
        async for event in turn.events_async():
            kind = event.type
            if kind == "delta":
                if not first_token:
                    first_token = time.monotonic()
                    bar.change(activity="answering")
                tokens += 1
                reply.add_delta(event.text, event.kind)
                if reply.due(time.monotonic()):
                    await reply.flush()
                    chat.to_bottom()
                    elapsed = time.monotonic() - first_token
                    if elapsed > 0.5:
                        bar.change(tok_s=tokens / elapsed)
            elif kind == "result":
                await self._finish(reply, event)
                asked.number = event.message - 1 if event.message else None
            elif kind == "approval":  # a changing tool call waits: the screen's answer goes to the turn
                ask(self.app, turn, event)
            else:
                self._progress(event)
        if isinstance(self.app.screen, ApprovalScreen):  # the turn ended while it asked
            self.app.screen.dismiss("reject")
        chat.to_bottom()
        if await chat.prune() and self.session_id:
            self.reload_window(self.session_id)  # what was pruned can be loaded again
        if self.queue:
            self.run_turn(self.queue.pop(0))
            self._show_queue()
        else:
            self.busy = False

    def _policy(self) -> Any:
        """The open session's tool policy: one per session, so "always" grants last as long as it."""
        level = self.wb.backend.options.allow_tools
        if level == "none":
            return None
        key = self.session_id or "new"
        if key not in self.policies:  # (changing calls come as `approval` events: _ask)
            from agent.policy import Policy

            self.policies[key] = Policy(level)
        return self.policies[key]

    def _progress(self, event: Any) -> None:
        bar = self.query_one(StatusBar)
        kind = event.type
        if kind == "session":
            if self.session_id is None and "new" in self.policies:
                self.policies[event.session_id] = self.policies.pop("new")
            self.session_id = event.session_id
            bar.change(model=event.model, backend=event.backend, context_size=event.context_size,
                       numerics=numerics_text(event.precision, event.kv_dtype))  # fmt: skip
        elif kind == "queued":
            bar.change(activity=f"queued #{event.position}")
        elif kind == "model_loading":
            bar.change(activity="model loaded" if event.done else f"loading {event.name}")
        elif kind == "retrieval":
            self.query_one(ContextPanel).show(event)
        elif kind == "cache":
            self.query_one(ContextPanel).show(None, event)
            bar.change(activity=f"prefill {event.prefill_tokens:,} (cached {event.cached_tokens:,})")
        elif kind == "prefill":
            bar.change(activity=f"prefill {event.done:,}/{event.total:,}")
            self.query_one(ContextPanel).prefill(event.done, event.total)
        elif kind == "index_progress" and event.phase != "done":
            done, total = (event.files_done, event.files_total) if event.phase == "reading" else (
                event.chunks_done, event.chunks_total)  # fmt: skip
            bar.change(
                activity=f"refreshing index {progress_bar(done, total)}" if total else "refreshing index"
            )
        elif kind == "tool_call":
            view = ToolCallView(event.call_id, event.tool, event.arguments)
            self.tool_views[event.call_id] = view
            self.query_one(ChatView).mount(view, before=self.query(AssistantMessage).last())
        elif kind == "tool_result" and event.call_id in self.tool_views:
            view = self.tool_views.pop(event.call_id)
            said, summary = event.result or event.error or "", event.summary or event.error or ""
            view.show_result(event.ok, summary, said, event.approval, event.seconds)

    async def _finish(self, reply: AssistantMessage, result: Any) -> None:
        bar = self.query_one(StatusBar)
        interrupted = result.finish_reason == "cancelled"
        tokens, timings = result.tokens or {}, result.timings or {}
        await reply.finish(reply_footer(result), result.message, interrupted)
        if result.is_error:
            self.notify(result.error or "the turn failed", title="Error", severity="error")
        used = tokens.get("prompt", 0) + tokens.get("generated", 0)
        bar.change(
            activity="interrupted" if interrupted else ("error" if result.is_error else "ready"),
            context_used=used,
            tok_s=timings.get("decode_tok_s", 0.0),
        )
        if result.session_id:
            self.session_id = result.session_id
        self.refresh_sessions()

    def action_cancel(self) -> None:
        if self.busy and self.turn is not None and not self.turn.done:
            self.turn.cancel()
            if self.queue:
                self.queue.clear()
                self._show_queue()
            self.notify("Stopping the reply (the partial reply is kept)", title="Cancel")
        elif self.focused is not None and not isinstance(self.focused, PromptInput):
            self.query_one(PromptInput).focus()

    async def action_new_session(self) -> None:
        if self.busy:
            self.notify("A reply is running: Esc to stop it first", severity="warning")
            return
        self.session_id = None
        self.session_messages = []
        await self.query_one(ChatView).remove_children()
        self.query_one(StatusBar).change(context_used=0, tok_s=0.0, activity="new session")
        self.run_worker(self.wb.backend.forget_open, thread=True)

    # -- panels and copying -------------------------------------------------------------------------

    def action_toggle_context(self) -> None:
        panel = self.query_one("#context")
        panel.display = not panel.display
        self.wb.settings.show_context = panel.display
        self.wb.save_settings()

    def last_reply(self) -> AssistantMessage | None:
        replies = list(self.query(AssistantMessage))
        return replies[-1] if replies else None

    def action_copy_reply(self) -> None:
        reply = self.last_reply()
        if reply is None or not reply.text:
            self.notify("No reply to copy yet", severity="warning")
            return
        self.wb.copy_text(reply.text, "the last reply")

    def action_copy_block(self) -> None:
        from workbench.tui.widgets.chat import code_blocks

        reply = self.last_reply()
        blocks = code_blocks(reply.text) if reply else []
        if not blocks:
            self.notify("The last reply has no code block", severity="warning")
            return
        if len(blocks) == 1:
            self.wb.copy_text(blocks[0], "the code block")
            return

        def chosen(answer: str | None) -> None:
            if answer and answer.strip().isdigit() and 1 <= int(answer) <= len(blocks):
                self.wb.copy_text(blocks[int(answer) - 1], f"code block {answer}")

        self.app.push_screen(
            TextPromptScreen(f"Which code block (1–{len(blocks)})?", str(len(blocks))), chosen
        )
