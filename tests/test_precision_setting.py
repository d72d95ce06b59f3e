"""The precision setting from the command line and the environment down to the model load:
`workbench --precision fp32|int8` and $WORKBENCH_PRECISION (engine/precision.py says what int8 does).

The turns run as real `workbench` processes against the private Redis (tests/headless_support.py); which
precision a session's model was loaded at shows in the fingerprint it records (int8 computes other keys
and values, so its KV blocks are kept apart)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import engine
from core.errors import UsageError
from engine import precision
from sessions.options import PRECISION_ENV, engine_load
from tests.fixtures.tiny_models import TinyModel
from tests.headless_support import Run, workbench
from workbench import cli

TinyModels = Callable[[str], TinyModel]
SHORT = ["--output-format", "json", "--allow-tools", "none", "--no-rag", "--temperature", "0"]


def turn(model: Path, repo: Path, *options: str, extra_env: dict[str, str] | None = None) -> Run:
    return workbench(
        "-p", "Hi", "--model", str(model), "--repo", str(repo), "--max-tokens", "3", *SHORT, *options,
        extra_env=extra_env,
    )  # fmt: skip


def recorded_fingerprint(session_id: str) -> str:
    shown = workbench("sessions", "show", session_id, "--json")
    assert shown.code == 0, shown
    return shown.json()["fingerprint"]


def test_the_cli_offers_the_engines_precisions() -> None:
    assert cli.PRECISIONS == precision.PRECISIONS and precision.DEFAULT == "fp32"


def test_engine_load_reads_the_environment(tiny_model: TinyModels, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tiny_model("qwen3_mlx_q4").path)
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    assert engine_load(path, "numpy").precision == "fp32"
    monkeypatch.setenv(PRECISION_ENV, "int8")
    assert engine_load(path, "numpy").precision == "int8"
    monkeypatch.setenv(PRECISION_ENV, "fp16")
    with pytest.raises(UsageError, match=r"WORKBENCH_PRECISION='fp16': choose one of fp32, int8, bf16"):
        engine_load(path, "numpy")


def test_precision_int8_reaches_a_headless_turn(tiny_model: TinyModels, tmp_path: Path) -> None:
    path = tiny_model("qwen3_mlx_q4").path
    runs = {p: turn(path, tmp_path, "--precision", p) for p in ("fp32", "int8")}
    for p, run in runs.items():
        assert run.code == 0, run
        expected = engine.load_model(path, backend="numpy", precision=p).fingerprint
        assert recorded_fingerprint(run.json()["session_id"]) == expected
    from_env = turn(path, tmp_path, extra_env={PRECISION_ENV: "int8"})
    assert from_env.code == 0, from_env
    int8_fingerprint = recorded_fingerprint(runs["int8"].json()["session_id"])
    assert recorded_fingerprint(from_env.json()["session_id"]) == int8_fingerprint


def test_precision_int8_on_a_float_model_fails_the_turn_saying_why(
    tiny_model: TinyModels, tmp_path: Path
) -> None:
    run = turn(tiny_model("qwen3_bf16").path, tmp_path, "--precision", "int8")
    assert run.code == 1, run
    assert "precision int8 applies to quantized weights only" in run.stderr


def test_bad_precisions_are_usage_errors_naming_the_setting(tiny_model: TinyModels, tmp_path: Path) -> None:
    path = tiny_model("qwen3_mlx_q4").path
    flag = turn(path, tmp_path, "--precision", "int4")
    assert flag.code == 2 and "--precision: invalid choice: 'int4'" in flag.stderr
    env = turn(path, tmp_path, extra_env={PRECISION_ENV: "int4"})
    assert env.code == 2 and "WORKBENCH_PRECISION='int4'" in env.stderr


def test_precision_bf16_reaches_a_headless_turn_of_a_bf16_model(
    tiny_model: TinyModels, tmp_path: Path
) -> None:
    from engine.backends import numpy_bf16

    path = tiny_model("qwen3_bf16").path
    run = turn(path, tmp_path, "--precision", "bf16")
    missing = numpy_bf16.matrix_unit_missing()
    if missing is not None:  # refused, saying why, before any token
        assert run.code == 1 and f"precision bf16 needs {missing}" in run.stderr, run
        return
    assert run.code == 0, run
    expected = engine.load_model(path, backend="numpy", precision="bf16").fingerprint
    assert recorded_fingerprint(run.json()["session_id"]) == expected
    assert expected != engine.load_model(path, backend="numpy").fingerprint
