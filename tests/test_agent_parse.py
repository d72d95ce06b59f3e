"""Tool calls parsed from streamed text: the same events however the text is split into deltas, the
answer text kept exactly, and every malformed or cut-off call an error result, never an exception.

Property-style: seeded random splits, random well-formed conversations and random garbage."""

from __future__ import annotations

import itertools
import json
import random
from typing import Any

import pytest

from agent.parse import CallError, ParseEvent, TextPiece, ToolCall, parser_for

SEEDS = range(40)


def feed_all(dialect: str, text: str, cuts: list[int] | None = None) -> list[ParseEvent]:
    parser = parser_for(dialect)
    bounds = [0, *sorted(cuts or []), len(text)]
    events: list[ParseEvent] = []
    for a, b in itertools.pairwise(bounds):
        events += parser.feed(text[a:b])
    return merge_text(events + parser.close())


def merge_text(events: list[ParseEvent]) -> list[ParseEvent]:
    out: list[ParseEvent] = []
    for ev in events:
        if isinstance(ev, TextPiece) and out and isinstance(out[-1], TextPiece):
            out[-1] = TextPiece(out[-1].text + ev.text)
        elif not (isinstance(ev, TextPiece) and not ev.text):
            out.append(ev)
    return out


def random_cuts(rng: random.Random, text: str) -> list[int]:
    if not text:
        return []
    mode = rng.choice(["chars", "few", "many"])
    if mode == "chars":
        return list(range(1, len(text)))
    return rng.sample(range(len(text)), min(len(text), 3 if mode == "few" else len(text) // 2))


def simple(events: list[ParseEvent]) -> list[tuple[Any, ...]]:
    """Events without raw text and error wording, for comparing against what was meant."""
    out: list[tuple[Any, ...]] = []
    for ev in events:
        if isinstance(ev, TextPiece):
            out.append(("text", ev.text))
        elif isinstance(ev, ToolCall):
            out.append(("call", ev.name, ev.arguments))
        else:
            out.append(("error", ev.name))
    return out


# ---- well-formed conversations ---------------------------------------------------------------------------

# (No special tokens such as <|python_tag|>: a model's special token is never part of an argument.)
NASTY_STRINGS = ["</tool_call>", "<tool_call>", '{"name": "x"}', "}}}", "{{", '\\"', "\\", "line\nbreak",
                 "ünïcödé ✓", "", "a" * 300]  # fmt: skip


def random_arguments(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for i in range(rng.randint(0, 4)):
        kind = rng.choice(["str", "int", "bool", "list", "obj"] if depth < 2 else ["str", "int"])
        key = rng.choice(["path", "text", "k", f"arg{i}", "old_text"])
        if kind == "str":
            args[key] = rng.choice(NASTY_STRINGS) + rng.choice(["", "x", " y "])
        elif kind == "int":
            args[key] = rng.randint(-5, 10_000)
        elif kind == "bool":
            args[key] = rng.random() < 0.5
        elif kind == "list":
            args[key] = [rng.choice(NASTY_STRINGS), rng.randint(0, 9)]
        else:
            args[key] = random_arguments(rng, depth + 1)
    return args


def random_text(rng: random.Random) -> str:
    # Answer text may hold braces, quotes, a '<' and partial tags, but never a whole opening tag.
    pieces = ["Let me look. ", "{not json} ", '"quoted" ', "a < b ", "<tool", "_call", "\n", "done.", "}"]
    return "".join(rng.choice(pieces) for _ in range(rng.randint(0, 6))).replace("<tool_call>", "<tool call>")


def qwen_conversation(rng: random.Random) -> tuple[str, list[tuple[Any, ...]]]:
    text, expected = "", []
    for _ in range(rng.randint(1, 5)):
        if rng.random() < 0.5:
            t = random_text(rng)
            text += t
            expected.append(("text", t))
        else:
            name, args = rng.choice(["read_file", "grep", "edit_file"]), random_arguments(rng)
            body = json.dumps({"name": name, "arguments": args}, ensure_ascii=rng.random() < 0.5,
                              indent=rng.choice([None, 2]))  # fmt: skip
            text += f"<tool_call>{rng.choice(['', chr(10)])}{body}{rng.choice(['', chr(10)])}</tool_call>"
            expected.append(("call", name, args))
    merged: list[tuple[Any, ...]] = []
    for item in expected:
        if item[0] == "text" and merged and merged[-1][0] == "text":
            merged[-1] = ("text", merged[-1][1] + item[1])
        elif item != ("text", ""):
            merged.append(item)
    return text, merged


@pytest.mark.parametrize("seed", SEEDS)
def test_qwen_calls_and_text_come_out_as_written_however_the_stream_is_split(seed: int) -> None:
    rng = random.Random(seed)
    text, expected = qwen_conversation(rng)
    assert simple(feed_all("qwen3", text)) == expected
    assert simple(feed_all("qwen3", text, random_cuts(rng, text))) == expected


def llama_reply(rng: random.Random) -> tuple[str, list[tuple[Any, ...]]]:
    calls = [(rng.choice(["read_file", "grep"]), random_arguments(rng)) for _ in range(rng.randint(1, 3))]
    key = rng.choice(["parameters", "arguments"])
    bodies = [json.dumps({"name": n, key: a}, indent=rng.choice([None, 2])) for n, a in calls]
    prefix = rng.choice(["", "<|python_tag|>", " ", "\n<|python_tag|>"])
    return prefix + rng.choice([";", "; ", "\n"]).join(bodies), [("call", n, a) for n, a in calls]


@pytest.mark.parametrize("seed", SEEDS)
def test_llama_json_calls_come_out_however_the_stream_is_split(seed: int) -> None:
    rng = random.Random(seed)
    text, expected = llama_reply(rng)
    assert simple(feed_all("llama", text)) == expected
    assert simple(feed_all("llama", text, random_cuts(rng, text))) == expected


def test_llama_text_replies_and_json_answers_stay_text() -> None:
    assert simple(feed_all("llama", "The answer is 4.")) == [("text", "The answer is 4.")]
    assert simple(feed_all("llama", '{"total": 4, "items": []} is the result')) == [
        ("text", '{"total": 4, "items": []} is the result')
    ]
    assert simple(feed_all("llama", 'Use {"name": "x"} in JSON.')) == [("text", 'Use {"name": "x"} in JSON.')]


def test_llama_python_tag_mid_reply_starts_a_call() -> None:
    text = 'Checking. <|python_tag|>{"name": "grep", "parameters": {"regex": "x"}}'
    assert simple(feed_all("llama", text)) == [("text", "Checking. "), ("call", "grep", {"regex": "x"})]


# ---- malformed and cut-off calls ---------------------------------------------------------------------------

QWEN_MALFORMED = [
    ('<tool_call>{"name": "read_file", "arguments": {"path": "a.py"}</tool_call>', "read_file"),  # a } short
    ("<tool_call>{'name': 'read_file'}</tool_call>", None),  # Python quotes
    ('<tool_call>{"arguments": {"path": "a"}}</tool_call>', None),  # no name
    ('<tool_call>{"name": "", "arguments": {}}</tool_call>', None),
    ('<tool_call>{"name": 7}</tool_call>', None),
    ('<tool_call>["read_file", {"path": "a"}]</tool_call>', None),
    ('<tool_call>{"name": "grep", "arguments": "not json"}</tool_call>', "grep"),
    ('<tool_call>{"name": "grep", "arguments": [1, 2]}</tool_call>', "grep"),
    ('<tool_call>{"name": "grep", "arguments": {}} and more</tool_call>', "grep"),
    ("<tool_call></tool_call>", None),
    ("<tool_call>read_file(path='a.py')</tool_call>", None),
    ('<tool_call>{"name": "read_file", "arguments": {"path": "a.py"', "read_file"),  # reply ended
    ('<tool_call>{"name": "read_file", "argu', "read_file"),
    ("<tool_call>", None),
    ('<tool_call>{"name": "x", "arguments": {"s": "unterminated string}}</tool_call>', "x"),
]


@pytest.mark.parametrize(("text", "name"), QWEN_MALFORMED)
def test_a_malformed_qwen_call_is_an_error_the_model_can_read(text: str, name: str | None) -> None:
    events = feed_all("qwen3", "before " + text)
    assert events[0] == TextPiece("before ")
    errors = [e for e in events if isinstance(e, CallError)]
    assert len(errors) == 1 and errors[0].error and errors[0].id == "call_1" and errors[0].name == name
    assert not any(isinstance(e, ToolCall) for e in events)


def test_a_qwen_call_missing_only_its_closing_tag_still_runs() -> None:
    events = feed_all("qwen3", '<tool_call>\n{"name": "grep", "arguments": {"regex": "a"}}\n')
    assert simple(events) == [("call", "grep", {"regex": "a"})]


def test_a_second_opening_tag_closes_an_unclosed_call() -> None:
    text = '<tool_call>{"name": "a", "arguments": {}}\n<tool_call>{"name": "b", "arguments": {}}</tool_call>'
    assert simple(feed_all("qwen3", text)) == [("call", "a", {}), ("call", "b", {})]


def test_ids_count_calls_and_errors_alike() -> None:
    text = '<tool_call>{"name":"a"}</tool_call><tool_call>oops</tool_call><tool_call>{"name":"b"}</tool_call>'
    ids = [e.id for e in feed_all("qwen3", "x" + text) if not isinstance(e, TextPiece)]
    assert ids == ["call_1", "call_2", "call_3"]


LLAMA_MALFORMED = [
    '<|python_tag|>{"name": "grep", "parameters": {"regex": "a"}',  # cut off
    "<|python_tag|>brave_search.call(query='x')",  # builtin-tool syntax
    '{"name": "grep", "parameters": {"regex": ',
    '{"name": "grep", "parameters": "regex"}',
    "<|python_tag|>",
    '<|python_tag|>{"parameters": {}}',
]


@pytest.mark.parametrize("text", LLAMA_MALFORMED)
def test_a_malformed_llama_call_is_an_error_the_model_can_read(text: str) -> None:
    events = feed_all("llama", text)
    assert [type(e) for e in events] == [CallError] and events[0].error


GARBAGE_ALPHABET = ["<tool_call>", "</tool_call>", "<|python_tag|>", "<tool_", "{", "}", "[", "]", '"', "\\",
                    ":", ",", "name", '"name"', '"arguments"', "x", " ", "\n", ";", "ü", "\x00"]  # fmt: skip


@pytest.mark.parametrize("dialect", ["qwen3", "llama"])
@pytest.mark.parametrize("seed", range(60))
def test_garbage_never_raises_and_splitting_never_changes_the_result(dialect: str, seed: int) -> None:
    rng = random.Random(seed)
    text = "".join(rng.choice(GARBAGE_ALPHABET) for _ in range(rng.randint(0, 80)))
    whole = feed_all(dialect, text)
    assert feed_all(dialect, text, random_cuts(rng, text)) == whole
    for ev in whole:
        assert isinstance(ev, TextPiece | ToolCall | CallError)
        if isinstance(ev, CallError):
            assert ev.error and ev.id.startswith("call_")
    # An opening tag always starts a call: it never reaches the answer text.
    tag = "<tool_call>" if dialect == "qwen3" else "<|python_tag|>"
    assert all(tag not in e.text for e in whole if isinstance(e, TextPiece))


def test_unknown_dialect_is_an_error_naming_the_families() -> None:
    with pytest.raises(ValueError, match="qwen2, qwen3, llama"):
        parser_for("gemma")
