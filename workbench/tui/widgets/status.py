"""The status bar: model and backend, live tok/s, context used, index state, Redis state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual.reactive import reactive
from textual.widgets import Static


@dataclass
class Status:
    model: str = "…"
    backend: str = ""
    numerics: str = ""  # the engine's settings other than the defaults, e.g. "int8 · kv float16"
    tok_s: float = 0.0
    context_used: int = 0
    context_size: int = 0
    activity: str = "starting"  # what the session is doing now
    index: str = "index: starting"
    redis: str = "redis: connecting"


def short_model(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1] or name


class StatusBar(Static):
    status: reactive[Status] = reactive(Status, always_update=True)

    def render_text(self) -> str:
        s = self.status
        model = " · ".join(part for part in (short_model(s.model), s.backend, s.numerics) if part)
        speed = f"{s.tok_s:.1f} tok/s" if s.tok_s else "– tok/s"
        size = f"/{s.context_size:,}" if s.context_size else ""
        context = f"ctx {s.context_used:,}{size}"
        return "  │  ".join([model, s.activity, speed, context, s.index, s.redis])

    def watch_status(self, status: Status) -> None:
        self.update(self.render_text())

    def change(self, **fields: object) -> None:
        for name, value in fields.items():
            setattr(self.status, name, value)
        self.mutate_reactive(StatusBar.status)


def numerics_text(precision: str, kv_dtype: str) -> str:
    """What differs from the exact defaults (fp32 arithmetic, float32 KV): the user chose it, so show it."""
    parts = [precision] if precision not in ("", "fp32") else []
    return " · ".join(parts + ([f"kv {kv_dtype}"] if kv_dtype not in ("", "float32") else []))


def index_text(state: Any) -> str:
    """The status bar's index field for a backend IndexState."""
    from workbench.tui.widgets.context import progress_bar

    if state.state == "ready":
        return f"index {state.files:,} files · {state.chunks:,} chunks"
    if state.total:
        return f"index {state.state} {progress_bar(state.done, state.total)} {state.detail}".rstrip()
    if state.state == "off":
        return "index off"
    return f"index {state.state}…"
