"""The pieces of the headless CLI that need no model: output layouts, script parsing, argument checks."""

from __future__ import annotations

import io
import json

import pytest

from core.errors import UsageError
from workbench.cli import build_parser
from workbench.cmd_run import parse_script
from workbench.headless import turn_request, wants_headless
from workbench.output import make_writer

SID = "01m80g1mny6aqse5"
EVENTS = [
    {"type": "session", "session_id": SID, "model": "m", "backend": "numpy"},
    {"type": "delta", "session_id": SID, "text": "Let me think", "kind": "reasoning"},
    {"type": "delta", "session_id": SID, "text": "The answer", "kind": "answer"},
    {"type": "delta", "session_id": SID, "text": " is 42.", "kind": "answer"},
]
RESULT = {"type": "result", "session_id": SID, "text": "The answer is 42.", "reasoning": "Let me think",
          "model": "m", "backend": "numpy", "finish_reason": "stop",
          "tokens": {"prompt": 10, "cached": 4, "prefilled": 6, "generated": 5},
          "timings": {"ttft_s": 0.1, "prefill_tok_s": 60.0, "decode_tok_s": 50.0, "restore_s": 0.01},
          "retrieved": [], "is_error": False, "error": None}  # fmt: skip


def write(fmt: str, result: dict) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    writer = make_writer(fmt, out, err)
    for event in EVENTS:
        writer.event(event)
    writer.result(result)
    return out.getvalue(), err.getvalue()


def test_text_puts_the_answer_on_stdout_and_reasoning_and_summary_on_stderr() -> None:
    out, err = write("text", RESULT)
    assert out == "The answer is 42.\n"
    assert err.splitlines() == [
        "Let me think",
        f"[session {SID} · m (numpy) · stop · prompt 10 tok, 4 cached · 5 tok at 50.0 tok/s]",
    ]


def test_text_error_is_one_line_naming_the_session() -> None:
    failed = {**RESULT, "text": "", "is_error": True, "error": "engine failed", "finish_reason": "error"}
    _, err = write("text", failed)
    assert err.splitlines()[-1] == f"workbench: engine failed (session {SID})"


def test_json_is_one_object_with_reasoning_apart() -> None:
    out, err = write("json", RESULT)
    (line,) = out.splitlines()
    assert json.loads(line) == RESULT and err == ""


def test_stream_json_is_every_event_then_the_result_and_fills_missing_fields() -> None:
    partial = {"type": "result", "session_id": SID, "is_error": True, "error": "model gone", "exit_code": 3}
    out, err = write("stream-json", partial)
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[:-1] == EVENTS
    assert lines[-1]["tokens"] == {"prompt": 0, "cached": 0, "prefilled": 0, "generated": 0}
    assert lines[-1]["timings"]["ttft_s"] is None and lines[-1]["finish_reason"] == "error"
    assert lines[-1]["retrieved"] == [] and lines[-1]["text"] == ""
    assert err == "workbench: model gone\n"


def test_script_paragraphs_and_jsonl() -> None:
    assert parse_script("one\ntwo lines\n\n\n  \nthree\n", "s.txt") == ["one\ntwo lines", "three"]
    assert parse_script('{"prompt": "a"}\n\n{"prompt": "b\\n\\nc"}\n', "s") == ["a", "b\n\nc"]
    assert parse_script("{not json, a paragraph}\n", "s.txt") == ["{not json, a paragraph}"]
    with pytest.raises(UsageError, match=r"s.jsonl:1: not a JSON object"):
        parse_script("plain text\n", "s.jsonl")
    with pytest.raises(UsageError, match=r"s:2: empty prompt"):
        parse_script('{"prompt": "a"}\n{"prompt": " "}\n', "s")
    with pytest.raises(UsageError, match="has no prompts"):
        parse_script(" \n\n", "s.txt")


def test_options_before_and_after_run_are_both_kept() -> None:
    parser = build_parser()
    args = parser.parse_args(["--model", "m1", "--no-rag", "run", "s.txt", "--max-tokens", "5", "--thinking"])
    request = turn_request(args)
    assert (request.model, request.sampling) == ("m1", {"max_tokens": 5})
    assert request.settings == {"rag": False, "thinking": True}
    assert wants_headless(parser.parse_args(["-p", "hi"])) and not wants_headless(parser.parse_args([]))
    with pytest.raises(UsageError, match="exclude each other"):
        turn_request(parser.parse_args(["--resume", "01m8", "run", "s.txt", "--continue"]))
