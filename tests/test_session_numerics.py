"""The engine's numeric settings (precision, KV dtype) travel with the `session` event, so that every
front end can say what the user runs on; the TUI's status bar names the ones that differ from the exact
defaults."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from sessions.events import SessionStarted
from tests.fixtures.tiny_models import TinyModel
from tests.headless_support import chat_model_dir, workbench
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


def test_a_float16_cache_is_reported_and_its_blocks_resume_the_session(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    path = chat_model_dir(tmp_path_factory.getbasetemp())
    args = ["--model", str(path), "--repo", str(tmp_path), "--max-tokens", "2", "--temperature", "0",
            "--no-rag", "--allow-tools", "none", "--output-format", "stream-json",
            "--kv-dtype", "float16"]  # fmt: skip
    first = workbench("-p", "Where is the parser?", *args)
    assert first.code == 0, first
    events = [json.loads(line) for line in first.stdout.splitlines() if line.strip()]
    session = next(e for e in events if e["type"] == "session")
    assert session["kv_dtype"] == "float16" and session["precision"] == "fp32"
    again = workbench("-p", "And the tests?", "--resume", session["session_id"], *args)
    assert again.code == 0, again
    cache = next(json.loads(line) for line in again.stdout.splitlines() if '"type": "cache"' in line)
    assert cache["cached_tokens"] > 0  # the float16 blocks the first turn stored


def test_a_bad_kv_dtype_is_named_before_anything_runs(tmp_path: Path) -> None:
    run = workbench("-p", "Hi", "--repo", str(tmp_path), extra_env={"WORKBENCH_KV_DTYPE": "bf16"})
    assert run.code == 2 and "WORKBENCH_KV_DTYPE='bf16'" in run.stderr, run
    assert "Traceback" not in run.stderr
