"""Headless agent turns: `--allow-tools` / `--max-turns` flags, the tool line of `text` output, and a real
`workbench` process offering tools to the tiny model (its random replies may or may not call them)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

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


@pytest.fixture(scope="module")
def steered(tiny_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    import engine
    from tests.agent_support import Steered, long_context_copy

    directory = long_context_copy(tiny_model("qwen3").path, tmp_path_factory.mktemp("agent_cli") / "qwen3")
    return Steered(engine.load_model(directory, backend="numpy"))


def headless_json(args: list[str], steered: Any, redis_client: Any, monkeypatch: pytest.MonkeyPatch,
                  capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:  # fmt: skip
    """`workbench -p ... --output-format json` in this process, on the steered model."""
    from sessions import SessionService
    from workbench import session_client
    from workbench.headless import run_turns

    service = SessionService(redis_client, load_model=lambda name, backend: steered)
    monkeypatch.setattr(session_client, "open_service", lambda: service)
    argv = ["-p", "x", "--model", "tiny", "--no-rag", "--temperature", "0", "--output-format", "json", *args]
    request = turn_request(build_parser().parse_args(argv))
    code = run_turns(request, ["Change beta in notes.txt."])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(("flags", "applied", "by"),
                         [([], False, "refused"), (["--allow-tools", "edit"], True, "auto")])  # fmt: skip
def test_headless_enforces_the_allow_level_and_a_refusal_is_not_an_error(
    flags: list[str], applied: bool, by: str, steered: Any, redis_client: Any, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from tests.agent_support import call

    (tmp_path / "notes.txt").write_text("alpha\nbeta\n")
    steered.script(call("edit_file", path="notes.txt", old_text="beta", new_text="gamma"), "Done.")
    args = ["--repo", str(tmp_path), *flags]
    code, result = headless_json(args, steered, redis_client, monkeypatch, capsys)
    assert code == 0 and not result["is_error"] and result["steps"] == 2 and result["text"] == "Done."
    (record,) = result["tool_calls"]
    assert record["tool"] == "edit_file" and record["approval"]["by"] == by and record["ok"] is applied
    assert (tmp_path / "notes.txt").read_text() == ("alpha\ngamma\n" if applied else "alpha\nbeta\n")
