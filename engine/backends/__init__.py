"""Array backends: one model definition, array operations supplied by the backend.

`get_backend(None)` picks mlx where it has a GPU (Apple Silicon), else numpy; "numpy" or "mlx" force one.
A backend is a module exposing the operations listed in docs/architecture.md.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from engine.errors import EngineError

BACKENDS = ("numpy", "mlx")


def default_backend_name() -> str:
    """mlx on Apple Silicon or wherever mlx has a GPU; numpy on plain CPUs (mlx CPU uses reference BLAS)."""
    try:
        import mlx.core as mx
    except ImportError:
        return "numpy"
    try:
        return "mlx" if mx.metal.is_available() or mx.default_device().type == mx.DeviceType.gpu else "numpy"
    except AttributeError:
        return "numpy"


def get_backend(name: str | None = None) -> ModuleType:
    """The backend module named `name` ("numpy" | "mlx"), or the machine's default for None."""
    name = name or default_backend_name()
    if name not in BACKENDS:
        raise EngineError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    try:
        return importlib.import_module(f"engine.backends.{name}_backend")
    except ImportError as exc:
        raise EngineError(f"backend {name!r} is not available: {exc}") from exc
