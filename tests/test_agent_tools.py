"""Each tool's behaviour and errors, on a real directory (and a real Redis index for search_code)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.confine import Confinement
from agent.tools import Kind, Limits, ToolContext, ToolError, ToolOutput, default_tools, schemas

TOOLS = {tool.name: tool for tool in default_tools()}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    files = {
        "src/app.py": "".join(f"line {i}\n" for i in range(1, 101)),
        "src/util.py": "def slugify(title):\n    return title.lower()\n\n\ndef helper():\n    return 1\n",
        "README.md": "# demo\nslugify makes slugs\n",
        ".gitignore": "build/\n*.log\n",
        "build/out.py": "slugify = 'generated'\n",
        "debug.log": "slugify in a log\n",
        ".env": "API_TOKEN=hunter2 slugify\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return root


@pytest.fixture
def ctx(repo: Path) -> ToolContext:
    return ToolContext(Confinement(repo), Limits(command_timeout_s=10))


def call(ctx: ToolContext, name: str, **args: Any) -> ToolOutput:
    return TOOLS[name].prepare(args, ctx).run()


def test_every_tool_has_a_function_schema_for_chat_templates() -> None:
    for schema in schemas(default_tools()):
        function = schema["function"]
        assert schema["type"] == "function" and function["description"]
        assert function["parameters"]["type"] == "object"
        assert set(function["parameters"]["required"]) <= set(function["parameters"]["properties"])
    assert set(TOOLS) == {"search_code", "read_file", "list_files", "grep", "edit_file", "write_file",
                          "run_command"}  # fmt: skip


def test_read_file_numbers_lines_and_reads_a_range(ctx: ToolContext) -> None:
    out = call(ctx, "read_file", path="src/app.py", start_line=10, end_line=12)
    assert out.text.splitlines() == ["   10\tline 10", "   11\tline 11", "   12\tline 12",
                                     "... (shown lines 10-12; use start_line=13 for more)"]  # fmt: skip
    assert out.summary == "src/app.py: lines 10-12 (more)"


def test_read_file_caps_lines_and_bytes(repo: Path) -> None:
    small = ToolContext(Confinement(repo), Limits(read_lines=5, read_bytes=10_000))
    assert call(small, "read_file", path="src/app.py").data["end_line"] == 5
    tiny = ToolContext(Confinement(repo), Limits(read_bytes=40))
    out = call(tiny, "read_file", path="src/app.py")
    assert out.data["end_line"] == 3 and "start_line=4" in out.text


@pytest.mark.parametrize(
    ("args", "error"),
    [({"path": "../x"}, "outside the repository"), ({"path": "nope.py"}, "no such file"),
     ({"path": "src"}, "is a directory"), ({}, "missing argument 'path'"), ({"path": 3}, "must be a string"),
     ({"path": "src/app.py", "start_line": 0}, "at least 1"), ({"path": "src/app.py", "lines": 3}, "unknown"),
     ({"path": "src/app.py", "start_line": 5, "end_line": 2}, "before start_line")],
)  # fmt: skip
def test_read_file_errors_name_the_problem(ctx: ToolContext, args: dict[str, Any], error: str) -> None:
    with pytest.raises(ToolError, match=error):
        call(ctx, "read_file", **args)


def test_reading_a_secrets_file_is_its_own_kind_and_a_normal_file_is_read(ctx: ToolContext) -> None:
    assert TOOLS["read_file"].prepare({"path": ".env"}, ctx).kind is Kind.SECRET
    assert TOOLS["read_file"].prepare({"path": "src/app.py"}, ctx).kind is Kind.READ


def test_list_files_honours_gitignore_and_globs(ctx: ToolContext) -> None:
    listed = call(ctx, "list_files").text.splitlines()
    assert "src/app.py" in listed and "README.md" in listed
    assert not {"build/out.py", "debug.log"} & set(listed) and not any(p.startswith(".git/") for p in listed)
    assert call(ctx, "list_files", pattern="*.py").text.splitlines() == ["src/app.py", "src/util.py"]
    assert call(ctx, "list_files", pattern="src/**").text.splitlines() == ["src/app.py", "src/util.py"]
    with pytest.raises(ToolError, match="relative"):
        call(ctx, "list_files", pattern="../**")


def test_list_files_skips_symlinks_that_leave_the_root(ctx: ToolContext, repo: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere.py").write_text("x\n")
    os.symlink(tmp_path / "elsewhere.py", repo / "src" / "link.py")
    assert "src/link.py" not in call(ctx, "list_files").text


def test_grep_finds_lines_but_not_ignored_or_secret_files(ctx: ToolContext) -> None:
    out = call(ctx, "grep", regex=r"slug\w+")
    lines = out.text.splitlines()
    assert lines[:2] == ["README.md:2: slugify makes slugs", "src/util.py:1: def slugify(title):"]
    assert "build/" not in out.text and "debug.log" not in out.text and "hunter2" not in out.text
    assert "secrets file(s) not searched" in out.text
    only_py = call(ctx, "grep", regex="SLUGIFY", ignore_case=True, pattern="*.py")
    assert only_py.summary == "1 matches in 1 files"
    with pytest.raises(ToolError, match="bad regex"):
        call(ctx, "grep", regex="(unclosed")


def test_edit_file_replaces_text_found_once_and_returns_the_diff(ctx: ToolContext, repo: Path) -> None:
    args = {"path": "src/util.py", "old_text": "return title.lower()", "new_text": "return title.strip()"}
    prepared = TOOLS["edit_file"].prepare(args, ctx)
    assert prepared.kind is Kind.EDIT and prepared.title == "edit_file src/util.py (+1 -1)"
    assert (repo / "src/util.py").read_text().count("strip") == 0  # nothing written before run()
    out = prepared.run()
    assert "-    return title.lower()\n+    return title.strip()\n" in out.text
    assert out.text == prepared.preview and out.text.startswith("--- a/src/util.py\n+++ b/src/util.py\n")
    assert "return title.strip()" in (repo / "src/util.py").read_text()


@pytest.mark.parametrize(
    ("old", "error"), [("not there", "not found"), ("return", "found 2 times"), ("", "empty")]
)
def test_edit_file_is_refused_unless_old_text_occurs_once(ctx: ToolContext, old: str, error: str) -> None:
    with pytest.raises(ToolError, match=error):
        TOOLS["edit_file"].prepare({"path": "src/util.py", "old_text": old, "new_text": "x"}, ctx)


def test_an_edit_prepared_on_old_contents_is_not_applied(ctx: ToolContext, repo: Path) -> None:
    prepared = TOOLS["edit_file"].prepare({"path": "src/util.py", "old_text": "helper", "new_text": "h"}, ctx)
    (repo / "src/util.py").write_text("changed meanwhile\n")
    out = prepared.run()
    assert not out.ok and "changed since" in out.text
    assert (repo / "src/util.py").read_text() == "changed meanwhile\n"


def test_write_file_creates_files_and_directories_and_keeps_the_mode(ctx: ToolContext, repo: Path) -> None:
    out = call(ctx, "write_file", path="new/dir/x.txt", content="a\nb")
    assert (repo / "new/dir/x.txt").read_text() == "a\nb"
    header = "--- /dev/null\n+++ b/new/dir/x.txt\n@@ -0,0 +1,2 @@\n"
    assert out.text == header + "+a\n+b\n\\ No newline at end of file\n"
    script = repo / "run.sh"
    script.write_text("echo 1\n")
    script.chmod(0o755)
    call(ctx, "write_file", path="run.sh", content="echo 2\n")
    assert script.read_text() == "echo 2\n" and script.stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize("path", [".git/HEAD", ".git/hooks/post-checkout", "../escape.txt"])
def test_write_file_never_writes_git_or_outside(ctx: ToolContext, repo: Path, path: str) -> None:
    with pytest.raises(ToolError, match=r"\.git|outside"):
        call(ctx, "write_file", path=path, content="#!/bin/sh\nevil\n")
    assert (repo / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert not (repo.parent / "escape.txt").exists()


def test_editing_a_secrets_file_needs_the_approval_a_secret_read_needs(ctx: ToolContext) -> None:
    prepared = TOOLS["edit_file"].prepare({"path": ".env", "old_text": "hunter2", "new_text": "x"}, ctx)
    assert prepared.kind is Kind.SECRET


def test_run_command_runs_in_the_root_with_a_minimal_environment(
    ctx: ToolContext, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "s3cr3t")
    out = call(ctx, "run_command", command="pwd; env; echo done >&2; exit 3")
    assert out.text.splitlines()[0] == str(repo.resolve())
    assert "s3cr3t" not in out.text and "REDIS_URL" not in out.text and "LANG=C.UTF-8" in out.text
    assert "done" in out.text and out.text.endswith("[exit code 3]") and not out.ok
    assert TOOLS["run_command"].prepare({"command": "ls"}, ctx).kind is Kind.COMMAND


def test_run_command_caps_its_output(repo: Path) -> None:
    ctx = ToolContext(Confinement(repo), Limits(command_output_bytes=1000))
    out = call(ctx, "run_command", command="yes 0123456789 | head -c 100000")
    assert out.data["dropped_bytes"] == 99_000 and "99000 more bytes" in out.text and out.ok


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie counts as gone: it is dead and only waits for its parent (init) to reap it.
    stat = Path(f"/proc/{pid}/stat").read_text() if Path(f"/proc/{pid}/stat").exists() else ""
    return bool(stat) and stat.split(")")[-1].split()[0] != "Z"


def test_a_command_outliving_its_timeout_is_killed_with_its_children(ctx: ToolContext, repo: Path) -> None:
    started = time.monotonic()
    out = call(ctx, "run_command", command="sleep 300 & echo $! > child.pid; trap '' TERM; sleep 300",
               timeout_s=1)  # fmt: skip
    assert time.monotonic() - started < 5
    assert "killed after the 1 s timeout" in out.text and not out.ok
    child = int((repo / "child.pid").read_text())
    deadline = time.monotonic() + 2
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def test_background_children_do_not_outlive_a_command_that_exits(ctx: ToolContext, repo: Path) -> None:
    out = call(ctx, "run_command", command="sleep 300 & echo $! > child.pid; echo started")
    assert out.ok and "started" in out.text
    child = int((repo / "child.pid").read_text())
    time.sleep(0.2)
    assert not _alive(child)


def test_cancelling_stops_a_running_command_at_once(ctx: ToolContext) -> None:
    threading.Timer(0.3, ctx.cancel.set).start()
    started = time.monotonic()
    out = call(ctx, "run_command", command="sleep 30")
    assert time.monotonic() - started < 3 and "the loop was stopped" in out.text


def test_search_code_is_hybrid_search_with_filters(ctx: ToolContext, repo: Path, redis_client: Any) -> None:
    from indexer import Index
    from indexer.index import shared_encoder

    ix = Index.open(repo, redis_client, encoder=shared_encoder())
    ix.update()
    ctx.open_index = lambda: ix
    out = call(ctx, "search_code", query="slugify", path="src/**", language="Python")
    hits = out.data["hits"]
    assert hits[0]["path"] == "src/util.py" and hits[0]["start_line"] == 1  # the chunk defining slugify
    assert all(h["path"].startswith("src/") for h in hits)  # README.md mentions slugify too: filtered out
    assert out.text.startswith("## src/util.py:1-2") and "def slugify(title):" in out.text
    assert call(ctx, "search_code", query="slugify", path="docs/**").text == "(no results)"


def test_search_code_without_an_index_says_what_to_use_instead(ctx: ToolContext) -> None:
    with pytest.raises(ToolError, match="use grep"):
        TOOLS["search_code"].prepare({"query": "x"}, ctx)
