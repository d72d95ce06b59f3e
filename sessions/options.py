"""What a caller may set for one turn; the settings among them stick to the session."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.env import env_choice
from core.errors import NotFound, UsageError
from sessions.model import Settings


@dataclass
class TurnOptions:
    model: str | None = None  # a new session's model; on a resumed one: continue with this model
    backend: str | None = None  # "numpy" | "mlx"; None: the engine's default
    repo: str | None = None  # a new session's repository (default: the current directory's)
    title: str | None = None  # a new session's title (default: from the prompt)
    system_prompt: str | None = None
    rag: bool | None = None
    thinking: bool | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    no_cache: bool = False  # recompute the whole prompt, read and write no KV block (the A/B reference)
    # Agent tools, per turn (never sticky: a permission is given each time): none | read | edit | all.
    allow_tools: str = "none"
    max_turns: int = 8  # generations in one turn's tool loop
    # An agent.policy.Policy the caller keeps for the session (the TUI: its approver and "always" grants);
    # None: Policy(allow_tools) without an approver, so what the level does not allow is refused (headless).
    policy: Any = None
    # Ask the caller about calls the level does not allow: an `approval` event, answered with
    # Turn.answer(call_id, "approve" | "reject" | "always"); False: they are refused (headless).
    ask_approval: bool = False
    # Re-answer the prompt an earlier attempt of this turn recorded (serve's re-run after its worker died):
    # when the session ends with this prompt (and at most the dead attempt's interrupted reply), it is not
    # recorded a second time and the reply takes the interrupted one's place.
    rerun: bool = False

    def __post_init__(self) -> None:
        if self.allow_tools not in ("none", "read", "edit", "all"):
            raise UsageError(f"allow_tools must be one of none, read, edit, all (got {self.allow_tools!r})")
        if self.max_turns < 1:
            raise UsageError(f"max_turns must be >= 1, got {self.max_turns}")

    def apply(self, settings: Settings) -> Settings:
        """`settings` with this turn's overrides; raises UsageError naming a bad value."""
        sampling = dataclasses.replace(settings.sampling)
        for name in ("max_tokens", "temperature", "top_p", "top_k", "seed"):
            value = getattr(self, name)
            if value is not None:
                setattr(sampling, name, value)
        if sampling.max_tokens < 1:
            raise UsageError(f"max_tokens must be >= 1, got {sampling.max_tokens}")
        if sampling.temperature < 0:
            raise UsageError(f"temperature must be >= 0, got {sampling.temperature}")
        if not 0 < sampling.top_p <= 1:
            raise UsageError(f"top_p must be in (0, 1], got {sampling.top_p}")
        out = dataclasses.replace(settings, sampling=sampling)
        if self.system_prompt is not None:
            out.system_prompt = self.system_prompt or None
        if self.rag is not None:
            out.rag = self.rag
        if self.thinking is not None:
            out.thinking = self.thinking
        return out


def repo_root(path: str | Path | None = None) -> str:
    """The repository a path belongs to: the nearest directory with .git, else the path itself."""
    start = Path(path or ".").expanduser().resolve()
    for directory in (start, *start.parents):
        if (directory / ".git").exists():
            return str(directory)
    return str(start)


def model_name(name: str) -> str:
    """A model directory given by a relative path is stored absolute, so any directory can resume."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


def default_model() -> str:
    import engine

    return engine.DEFAULT_MODEL


def check_model_exists(name: str) -> None:
    from engine.errors import EngineError
    from engine.loader import resolve_path

    try:
        resolve_path(name)
    except EngineError as exc:
        raise NotFound(f"model {name!r} not found: {exc}") from None


PRECISION_ENV = "WORKBENCH_PRECISION"  # fp32 (exact, the default) | int8 | bf16 (engine/precision.py)
# The KV dtype: float32 (exact, the default) | float16 (the cache in memory and its blocks: half the
# bytes) | int8 (blocks only, quantized on the way to the store; the cache stays float32: kvstore/open.py).
KV_DTYPE_ENV = "WORKBENCH_KV_DTYPE"
KV_DTYPE_CHOICES = ("float32", "float16", "int8")


def engine_load(name: str, backend: str | None) -> Any:
    """The service's default model loader (the engine thread calls it), at $WORKBENCH_PRECISION and
    $WORKBENCH_KV_DTYPE (process-wide settings: `workbench --precision / --kv-dtype` set them for the
    process and its workers)."""
    import engine
    from engine.precision import DEFAULT, PRECISIONS

    precision = env_choice(PRECISION_ENV, PRECISIONS, DEFAULT)
    kv = env_choice(KV_DTYPE_ENV, KV_DTYPE_CHOICES, "")
    kv_dtype = kv if kv in ("float32", "float16") else None  # int8 or unset: the backend's own dtype
    return engine.load_model(name, backend=backend, precision=precision, kv_dtype=kv_dtype)
