"""Headless agent turns: `--allow-tools` / `--max-turns` flags, the tool line of `text` output, and a real
`workbench` process offering tools to the tiny model (its random replies may or may not call them)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from core.errors import UsageError
from tests.headless_support import chat_model_dir, workbench
from workbench.cli import build_parser
from workbench.headless import turn_request
from workbench.output import make_writer

SID = "01m80g1mny6aqse5"


def test_flags_reach_the_turn_request_and_default_to_read_tools() -> None:
    parser = build_parser()
    request = turn_request(parser.parse_args(["-p", "x", "--allow-tools", "edit", "--max-turns", "3"]))
    assert (request.allow_tools, request.max_turns) == ("edit", 3)
    default = turn_request(parser.parse_args(["-p", "x"]))
    assert (default.allow_tools, default.max_turns) == ("read", 8)


@pytest.mark.parametrize("args", [["--allow-tools", "write"], ["--max-turns", "0"]])
def test_bad_agent_flags_are_usage_errors_naming_the_flag(args: list[str]) -> None:
    with pytest.raises(UsageError, match=args[0]) as exc:
        build_parser().parse_args(["-p", "x", *args])
    assert exc.value.exit_code == 2


def test_text_output_shows_one_line_per_tool_call_on_stderr() -> None:
    out, err = io.StringIO(), io.StringIO()
    writer = make_writer("text", out, err)
    writer.event({"type": "delta", "session_id": SID, "text": "Looking", "kind": "answer"})
    writer.event({"type": "tool_result", "session_id": SID, "tool": "read_file", "ok": True,
                  "summary": "a.py: lines 1-9", "approval": {"by": "auto"}})  # fmt: skip
    writer.event({"type": "tool_result", "session_id": SID, "tool": "edit_file", "ok": False,
                  "summary": "refused", "error": "refused: no edits",
                  "approval": {"by": "refused"}})  # fmt: skip
    assert out.getvalue() == "Looking\n"
    assert err.getvalue().splitlines() == ["[tool read_file: a.py: lines 1-9]",
                                           "[tool edit_file (refused): refused: no edits]"]  # fmt: skip


def test_a_headless_agent_turn_offers_tools_and_streams_a_valid_result(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    model = str(chat_model_dir(tmp_path_factory.getbasetemp()))
    base = ["-p", "What is in notes.txt?", "--model", model, "--repo", str(tmp_path), "--no-rag",
            "--temperature", "0", "--max-tokens", "8", "--output-format", "stream-json"]  # fmt: skip
    plain = workbench(*base, "--allow-tools", "none")
    agent = workbench(*base, "--max-turns", "2")  # the default: read-only tools
    assert plain.code == 0 and agent.code == 0, agent
    events = agent.lines()
    allowed = {"queued", "model_loading", "session", "retrieval", "cache", "prefill", "delta", "tool_call",
               "tool_result", "result"}
    assert {e["type"] for e in events} <= allowed
    result, plain_result = events[-1], plain.lines()[-1]
    assert 1 <= result["steps"] <= 2 and isinstance(result["tool_calls"], list) and plain_result["steps"] == 0
    # The tool schemas are in the agent prompt (and only there).
    assert result["tokens"]["prompt"] > plain_result["tokens"]["prompt"] + 1000
    assert len([e for e in events if e["type"] == "tool_result"]) == len(result["tool_calls"])
