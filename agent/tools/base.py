"""What every tool is made of: a schema, a `prepare` that checks arguments without side effects, and a
`run` that does the work. Preparing first lets an approval show exactly what will happen."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from agent.confine import Confinement, PathRefused


class Kind(StrEnum):
    """What a call does, which decides whether it needs approval (agent/policy.py)."""

    READ = "read"
    SECRET = "secret"  # reading a secrets file
    EDIT = "edit"
    COMMAND = "command"


class ToolError(Exception):
    """Bad arguments or a refused path: becomes a result the model reads, never a crash."""


@dataclass(frozen=True)
class Limits:
    read_bytes: int = 64_000  # read_file: most bytes returned
    read_lines: int = 400  # read_file: most lines returned
    list_entries: int = 500  # list_files
    grep_matches: int = 200  # grep
    grep_file_bytes: int = 1_000_000  # grep skips bigger files
    search_k: int = 20  # search_code: most hits
    command_timeout_s: float = 60.0
    command_output_bytes: int = 32_000
    write_bytes: int = 1_000_000  # write_file / edit_file: largest resulting file


@dataclass
class ToolContext:
    confine: Confinement
    limits: Limits = field(default_factory=Limits)
    open_index: Callable[[], Any] | None = None  # -> indexer.Index; None: search_code is unavailable
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass
class ToolOutput:
    text: str  # what the model reads
    summary: str  # one line for transcripts and the TUI
    ok: bool = True
    data: dict[str, Any] = field(default_factory=dict)  # structured details (diff, exit code, paths)


@dataclass
class Prepared:
    kind: Kind
    title: str  # one line: what is about to happen
    preview: str  # the diff, the command, the path
    run: Callable[[], ToolOutput]


class Tool(ABC):
    """A tool: subclasses set `name`, `description`, `parameters` (JSON schema) and `prepare`."""

    name: str = ""
    description: str = ""
    parameters: Mapping[str, Any] = {}
    kind: Kind = Kind.READ  # the usual kind; prepare() may raise it for one call (a secrets file)

    @property
    def schema(self) -> dict[str, Any]:
        function = {"name": self.name, "description": self.description, "parameters": dict(self.parameters)}
        return {"type": "function", "function": function}

    @abstractmethod
    def prepare(self, arguments: Mapping[str, Any], ctx: ToolContext) -> Prepared:
        """Check the arguments and say what the call will do; `run` does it once approved."""


def object_schema(required: list[str], **properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required}


def arg_str(arguments: Mapping[str, Any], name: str, *, required: bool = True, default: str = "") -> str:
    value = arguments.get(name)
    if value is None:
        if required:
            raise ToolError(f"missing argument {name!r}")
        return default
    if not isinstance(value, str):
        raise ToolError(f"argument {name!r} must be a string, got {type(value).__name__}")
    return value


def arg_int(arguments: Mapping[str, Any], name: str, default: int | None, *, minimum: int = 0) -> int | None:
    value = arguments.get(name)
    if value is None:
        return default
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)  # small models often quote numbers
    if isinstance(value, bool) or not isinstance(value, int):
        raise ToolError(f"argument {name!r} must be an integer, got {value!r}")
    if value < minimum:
        raise ToolError(f"argument {name!r} must be at least {minimum}, got {value}")
    return value


def confined(ctx: ToolContext, path: str, *, write: bool = False) -> Any:
    try:
        return ctx.confine.resolve(path, write=write)
    except PathRefused as exc:
        raise ToolError(str(exc)) from None


def check_unknown(arguments: Mapping[str, Any], allowed: Mapping[str, Any]) -> None:
    unknown = sorted(set(arguments) - set(allowed))
    if unknown:
        raise ToolError(f"unknown argument(s) {', '.join(map(repr, unknown))}; expected {', '.join(allowed)}")
