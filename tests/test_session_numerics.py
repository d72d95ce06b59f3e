"""The engine's numeric settings (precision, KV dtype) travel with the `session` event, so that every
front end can say what the user runs on; the TUI's status bar names the ones that differ from the exact
defaults."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from sessions.events import SessionStarted
from tests.fixtures.tiny_models import TinyModel
from tests.headless_support import workbench
from workbench.tui.widgets.status import Status, StatusBar, numerics_text

TinyModels = Callable[[str], TinyModel]


def session_event(model: Path, repo: Path, *options: str) -> dict:
    run = workbench(
        "-p", "Hi", "--model", str(model), "--repo", str(repo), "--max-tokens", "2", "--temperature", "0",
        "--no-rag", "--allow-tools", "none", "--output-format", "stream-json", *options,
    )  # fmt: skip
    assert run.code == 0, run
    events = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
    return next(e for e in events if e["type"] == "session")


def test_the_session_event_defaults_to_the_exact_settings() -> None:
    event = SessionStarted("s1")
    assert (event.precision, event.kv_dtype) == ("fp32", "float32")


def test_a_headless_turn_reports_the_precision_it_ran_at(tiny_model: TinyModels, tmp_path: Path) -> None:
    path = tiny_model("qwen3_mlx_q4").path
    assert session_event(path, tmp_path)["precision"] == "fp32"
    event = session_event(path, tmp_path, "--precision", "int8")
    assert event["precision"] == "int8" and event["kv_dtype"] == "float32"


def test_the_status_bar_names_only_what_differs_from_the_defaults() -> None:
    assert numerics_text("fp32", "float32") == ""
    assert numerics_text("int8", "float32") == "int8"
    assert numerics_text("fp32", "float16") == "kv float16"
    assert numerics_text("int8", "float16") == "int8 · kv float16"
    bar = StatusBar()
    bar.status = Status(model="Qwen/Qwen3-0.6B", backend="numpy", numerics="int8 · kv float16")
    assert bar.render_text().startswith("Qwen3-0.6B · numpy · int8 · kv float16  │")
    bar.status = Status(model="Qwen/Qwen3-0.6B", backend="numpy")
    assert bar.render_text().startswith("Qwen3-0.6B · numpy  │")
