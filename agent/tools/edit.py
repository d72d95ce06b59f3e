"""Changing tools for files: edit_file (exact old text -> new text) and write_file.

The diff is computed in `prepare`, before any approval, and `run` writes exactly that result, but only if
the file still holds what the diff was made from (it may have changed while the user was deciding).
"""

from __future__ import annotations

import difflib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.tools.base import (
    Kind,
    Prepared,
    Tool,
    ToolContext,
    ToolError,
    ToolOutput,
    arg_str,
    check_unknown,
    confined,
    object_schema,
)


def unified_diff(rel: str, before: str | None, after: str) -> str:
    old = [] if before is None else before.splitlines(keepends=True)
    lines = difflib.unified_diff(
        old, after.splitlines(keepends=True), "/dev/null" if before is None else f"a/{rel}", f"b/{rel}"
    )
    # A last line without a newline would run into the next header: mark it as git does.
    marked = (line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)
    return "".join(marked)


def diff_counts(diff: str) -> tuple[int, int]:
    lines = diff.splitlines()
    added = sum(1 for line in lines if line.startswith("+") and not line.startswith("+++"))
    removed = sum(1 for line in lines if line.startswith("-") and not line.startswith("---"))
    return added, removed


def _current(path: Path) -> str | None:
    """The file's text, None if it does not exist; errors for what cannot be edited as text."""
    if not path.exists():
        return None
    if not path.is_file():
        raise ToolError("not a regular file")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ToolError("not a UTF-8 text file") from None
    except OSError as exc:
        raise ToolError(f"cannot read: {exc.strerror}") from None


def _write_atomically(path: Path, text: str) -> None:
    """Temp file + rename in the same directory, keeping the file's mode: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o7777 if path.exists() else None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _change(ctx: ToolContext, tool: str, path: Path, before: str | None, after: str) -> Prepared:
    if len(after.encode("utf-8")) > ctx.limits.write_bytes:
        raise ToolError(f"the result would be larger than {ctx.limits.write_bytes} bytes")
    rel = ctx.confine.relative(path)
    diff = unified_diff(rel, before, after)
    added, removed = diff_counts(diff)
    title = f"{tool} {rel} (+{added} -{removed})" + (" (new file)" if before is None else "")

    def run() -> ToolOutput:
        # Re-confine at write time: a symlink swapped in while approval was pending must not escape.
        target = ctx.confine.resolve(rel, write=True)
        if _current(target) != before:
            return ToolOutput(f"{rel} changed since the edit was prepared; read it again", "stale", ok=False)
        _write_atomically(target, after)
        return ToolOutput(diff or "(no change)", f"{rel}: +{added} -{removed}",
                          data={"path": rel, "diff": diff, "added": added, "removed": removed})  # fmt: skip

    # Editing a secrets file would show its text in the diff: it needs the approval a secret read needs.
    kind = Kind.SECRET if ctx.confine.is_secret(path) else Kind.EDIT
    return Prepared(kind, title, diff or f"(no change to {rel})", run)


class EditFile(Tool):
    name = "edit_file"
    kind = Kind.EDIT
    description = "Replace old_text, which must occur exactly once in the file, with new_text."
    parameters = object_schema(
        ["path", "old_text", "new_text"],
        path={"type": "string"},
        old_text={"type": "string"},
        new_text={"type": "string"},
    )

    def prepare(self, arguments: Mapping[str, Any], ctx: ToolContext) -> Prepared:
        check_unknown(arguments, self.parameters["properties"])
        path = confined(ctx, arg_str(arguments, "path"), write=True)
        old, new = arg_str(arguments, "old_text"), arg_str(arguments, "new_text")
        if not old:
            raise ToolError("old_text is empty (use write_file to create a file)")
        before = _current(path)
        if before is None:
            raise ToolError(f"{ctx.confine.relative(path)} does not exist (use write_file to create it)")
        count = before.count(old)
        if count != 1:
            where = "not found" if count == 0 else f"found {count} times"
            raise ToolError(f"old_text {where} in {ctx.confine.relative(path)}; it must occur exactly once")
        return _change(ctx, self.name, path, before, before.replace(old, new, 1))


class WriteFile(Tool):
    name = "write_file"
    kind = Kind.EDIT
    description = "Create or overwrite a file with content."
    parameters = object_schema(["path", "content"], path={"type": "string"}, content={"type": "string"})

    def prepare(self, arguments: Mapping[str, Any], ctx: ToolContext) -> Prepared:
        check_unknown(arguments, self.parameters["properties"])
        path = confined(ctx, arg_str(arguments, "path"), write=True)
        content = arg_str(arguments, "content")
        return _change(ctx, self.name, path, _current(path), content)
