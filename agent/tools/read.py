"""Read-only tools over the repository's files: read_file, list_files, grep."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from agent.confine import PathRefused
from agent.tools.base import (
    Kind,
    Prepared,
    Tool,
    ToolContext,
    ToolError,
    ToolOutput,
    arg_int,
    arg_str,
    check_unknown,
    confined,
    object_schema,
)
from indexer.scan import scan
from indexer.search import glob_matcher


def read_text(path: Path, max_bytes: int) -> tuple[str, bool]:
    """The file decoded as UTF-8 (invalid bytes replaced) and whether it was cut at `max_bytes`."""
    if not path.exists():
        raise ToolError("no such file")
    if path.is_dir():
        raise ToolError("is a directory (use list_files)")
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise ToolError(f"cannot read: {exc.strerror}") from None
    if b"\x00" in data[:8192]:
        raise ToolError("binary file (NUL bytes)")
    return data[:max_bytes].decode("utf-8", errors="replace"), len(data) > max_bytes


class ReadFile(Tool):
    name = "read_file"
    description = "Read a file with line numbers; start_line/end_line (1-based, inclusive) for a range."
    parameters = object_schema(
        ["path"], path={"type": "string"}, start_line={"type": "integer"}, end_line={"type": "integer"}
    )

    def prepare(self, arguments: Mapping[str, Any], ctx: ToolContext) -> Prepared:
        check_unknown(arguments, self.parameters["properties"])
        path = confined(ctx, arg_str(arguments, "path"))
        rel = ctx.confine.relative(path)
        start = arg_int(arguments, "start_line", 1, minimum=1) or 1
        end = arg_int(arguments, "end_line", None, minimum=1)
        if end is not None and end < start:
            raise ToolError(f"end_line {end} is before start_line {start}")
        kind = Kind.SECRET if ctx.confine.is_secret(path) else Kind.READ
        return Prepared(kind, f"read_file {rel}", rel, lambda: self._run(ctx, path, rel, start, end))

    def _run(self, ctx: ToolContext, path: Path, rel: str, start: int, end: int | None) -> ToolOutput:
        # The byte cap applies to the text from start_line on, so a range deep in a big file still reads.
        text, cut = read_text(path, ctx.limits.read_bytes * 16)
        lines = text.splitlines()
        last = len(lines) if end is None else min(end, len(lines))
        last = min(last, start + ctx.limits.read_lines - 1)
        out, size = [], 0
        for number in range(start, last + 1):
            line = f"{number:>5}\t{lines[number - 1]}"
            if size + len(line) > ctx.limits.read_bytes:
                last = number - 1
                break
            out.append(line)
            size += len(line) + 1
        more = last < len(lines) or cut
        body = "\n".join(out) if out else f"(no lines: the file has {len(lines)})"
        if more:
            body += f"\n... (shown lines {start}-{last}; use start_line={last + 1} for more)"
        summary = f"{rel}: lines {start}-{last}" + (" (more)" if more else "")
        return ToolOutput(body, summary, data={"path": rel, "start_line": start, "end_line": last})


def repo_files(ctx: ToolContext, pattern: str | None) -> list[str]:
    """Repository files (the index's view: .gitignore rules, nested ones too, and its defaults)."""
    matcher = glob_matcher(pattern)
    return [f for f in scan(ctx.confine.root).files if (matcher is None or matcher(f)) and _inside(ctx, f)]


def _inside(ctx: ToolContext, rel: str) -> bool:
    """False for a file symlink whose target is outside the root (the scan follows file links)."""
    try:
        ctx.confine.resolve(rel)
    except PathRefused:
        return False
    return True


class ListFiles(Tool):
    name = "list_files"
    description = "List files, minus .gitignore'd ones. pattern: a glob such as '**/*.py' (default: all)."
    parameters = object_schema([], pattern={"type": "string"})

    def prepare(self, arguments: Mapping[str, Any], ctx: ToolContext) -> Prepared:
        check_unknown(arguments, self.parameters["properties"])
        pattern = arg_str(arguments, "pattern", required=False) or None
        if pattern and (pattern.startswith("/") or ".." in pattern.split("/")):
            raise ToolError(f"pattern {pattern!r} must be relative to the repository root")
        title = f"list_files {pattern or '*'}"
        return Prepared(Kind.READ, title, pattern or "", lambda: self._run(ctx, pattern))

    def _run(self, ctx: ToolContext, pattern: str | None) -> ToolOutput:
        files = repo_files(ctx, pattern)
        shown = files[: ctx.limits.list_entries]
        body = "\n".join(shown) if shown else "(no files match)"
        if len(files) > len(shown):
            body += f"\n... ({len(files) - len(shown)} more; narrow the pattern)"
        return ToolOutput(body, f"{len(files)} files", data={"count": len(files)})


class Grep(Tool):
    name = "grep"
    description = "Search files for a Python regex; prints path:line: text. pattern: a glob of files."
    parameters = object_schema(
        ["regex"], regex={"type": "string"}, pattern={"type": "string"}, ignore_case={"type": "boolean"}
    )

    def prepare(self, arguments: Mapping[str, Any], ctx: ToolContext) -> Prepared:
        check_unknown(arguments, self.parameters["properties"])
        source = arg_str(arguments, "regex")
        flags = re.IGNORECASE if arguments.get("ignore_case") in (True, "true") else 0
        try:
            regex = re.compile(source, flags)
        except re.error as exc:
            raise ToolError(f"bad regex {source!r}: {exc}") from None
        pattern = arg_str(arguments, "pattern", required=False) or None
        title = f"grep {source!r}" + (f" in {pattern}" if pattern else "")
        return Prepared(Kind.READ, title, source, lambda: self._run(ctx, regex, pattern))

    def _run(self, ctx: ToolContext, regex: re.Pattern[str], pattern: str | None) -> ToolOutput:
        matches, files, secrets = [], set(), 0
        for rel in repo_files(ctx, pattern):
            if ctx.confine.is_secret(ctx.confine.root / rel):
                secrets += 1  # never read without approval: read_file asks for them one by one
                continue
            for number, line in _lines(ctx.confine.root / rel, ctx.limits.grep_file_bytes):
                if regex.search(line):
                    matches.append(f"{rel}:{number}: {line[:300]}")
                    files.add(rel)
                    if len(matches) > ctx.limits.grep_matches:
                        break
            if len(matches) > ctx.limits.grep_matches:
                break
        shown = matches[: ctx.limits.grep_matches]
        body = "\n".join(shown) if shown else "(no matches)"
        if len(matches) > len(shown):
            body += "\n... (more matches; narrow the regex or the pattern)"
        if secrets:
            body += f"\n({secrets} secrets file(s) not searched)"
        return ToolOutput(body, f"{len(shown)} matches in {len(files)} files", data={"matches": len(shown)})


def _lines(path: Path, max_bytes: int) -> Iterator[tuple[int, str]]:
    try:
        if path.stat().st_size > max_bytes:
            return
        data = path.read_bytes()
    except OSError:
        return
    if b"\x00" in data[:8192]:
        return
    yield from enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1)
