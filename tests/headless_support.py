"""Helpers of the headless CLI tests: a tiny chat model with room for a few turns, and `workbench` runs.

Every run is a real subprocess (`python -m workbench ...`) inheriting REDIS_URL and WORKBENCH_HOME from
the test, so it sees the same session store as the test and as the other runs of that test.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
MAX_POSITIONS = 4096  # room for multi-turn sessions and for a long reply to interrupt
RUN_TIMEOUT_S = 60


@functools.cache
def chat_model_dir(root: Path) -> Path:
    """engine-core's tiny Qwen3 fixture (random weights, real tokenizer and chat template), longer context;
    built once per test run under `root` (pytest's base temp dir)."""
    from tests.fixtures.tiny_models import _SMALL, Spec, build_spec

    spec = Spec(
        "qwen3", "qwen3", "v5", tied=False, sizes={**_SMALL, "max_position_embeddings": MAX_POSITIONS}
    )
    # Seed 3: greedy replies run to max_tokens instead of hitting EOS within a few tokens, so a test
    # can interrupt a reply that is really mid-generation (seed 4242 ended "Tell a very long story."
    # after 13 tokens, ~10 ms: the Ctrl-C test raced the end of the reply).
    return build_spec("qwen3_headless", spec, root, seed=3).path


@dataclass
class Run:
    args: list[str]
    code: int
    stdout: str
    stderr: str

    def json(self) -> dict[str, Any]:
        return json.loads(self.stdout)

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    def __str__(self) -> str:
        head = f"workbench {' '.join(self.args)} -> {self.code}"
        return f"{head}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "workbench", *args]


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = str(ROOT)
    out["PYTHONUNBUFFERED"] = "1"
    return out


def workbench(*args: str, stdin: str | None = None, extra_env: dict[str, str] | None = None) -> Run:
    proc = subprocess.run(
        command(*args),
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**env(), **(extra_env or {})},
        timeout=RUN_TIMEOUT_S,
    )
    return Run(list(args), proc.returncode, proc.stdout, proc.stderr)


def store_is_empty(r: redis.Redis, home: Path) -> bool:
    """No session in Redis (no wb:{s}:* key) and no session log on disk."""
    sessions_dir = home / "sessions"
    on_disk = list(sessions_dir.glob("*.jsonl")) if sessions_dir.exists() else []
    return not list(r.scan_iter(match="wb:{s}:*")) and not on_disk
