"""Settings read from the environment, with errors that name the variable at fault."""

from __future__ import annotations

import os

from core.errors import UsageError

# OpenBLAS reads OPENBLAS_THREAD_TIMEOUT once, when numpy first loads it: entry points (workbench/, bench/)
# set this before anything imports numpy. Why 20: engine/backends/blas_threads.py (SPIN_LOG2_CYCLES).
OPENBLAS_SPIN_LOG2_CYCLES = "20"


def env_int(name: str, default: int) -> int:
    """The integer in $name, or `default` when unset or empty."""
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not an integer") from None


def env_choice(name: str, choices: tuple[str, ...], default: str) -> str:
    """The value of $name, one of `choices`, or `default` when unset or empty."""
    raw = os.environ.get(name)
    if not raw:
        return default
    if raw not in choices:
        raise UsageError(f"{name}={raw!r}: choose one of {', '.join(choices)}")
    return raw


def set_blas_spin_default() -> None:
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", OPENBLAS_SPIN_LOG2_CYCLES)
