"""The status bar: model and backend, live tok/s, context used, index state, Redis state."""

from __future__ import annotations

from dataclasses import dataclass

from textual.reactive import reactive
from textual.widgets import Static


@dataclass
class Status:
    model: str = "…"
    backend: str = ""
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
        model = short_model(s.model) + (f" · {s.backend}" if s.backend else "")
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
