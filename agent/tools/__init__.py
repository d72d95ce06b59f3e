"""The tools offered to the model, one module per family, and their JSON schemas for chat templates."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from agent.tools.base import Kind, Limits, Prepared, Tool, ToolContext, ToolError, ToolOutput
from agent.tools.command import RunCommand
from agent.tools.edit import EditFile, WriteFile
from agent.tools.read import Grep, ListFiles, ReadFile
from agent.tools.search import SearchCode

__all__ = [
    "Kind", "Limits", "Prepared", "Tool", "ToolContext", "ToolError", "ToolOutput",
    "default_tools", "read_only_tools", "schemas",
]  # fmt: skip


def read_only_tools() -> list[Tool]:
    return [SearchCode(), ReadFile(), ListFiles(), Grep()]


def default_tools() -> list[Tool]:
    return [*read_only_tools(), EditFile(), WriteFile(), RunCommand()]


def schemas(tools: Iterable[Tool]) -> list[dict[str, Any]]:
    """What `tokenizer.render_chat(messages, tools=...)` takes."""
    return [tool.schema for tool in tools]
