"""The headless contract (README "Headless use"), tested through real `workbench` processes.

Each test drives `python -m workbench` subprocesses against the private Redis and a fresh data dir, with
engine-core's tiny random-weight Qwen3 (real tokenizer and chat template) as the model.
"""

from __future__ import annotations

import json
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from sessions.ids import is_valid
from tests.headless_support import ROOT, chat_model_dir, command, env, store_is_empty, workbench
from workbench.output import RESULT_FIELDS, RETRIEVED_FIELDS, TIMING_FIELDS, TOKEN_FIELDS

# Long enough that the history spans several 64-token KV blocks, so a resumed turn restores some.
LONG_PROMPT = " ".join(["Explain how the parser reads a config file and reports the line of each error."] * 8)
GREEDY = ["--temperature", "0", "--max-tokens", "8", "--no-rag"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(chat_model_dir(tmp_path_factory.getbasetemp()))


def check_result_object(data: dict, session_id: str | None = None) -> None:
    """Every field the contract promises, with the right types."""
    for name in RESULT_FIELDS:
        assert name in data, f"result lacks {name!r}: {data}"
    assert data["type"] == "result" and data["is_error"] is False and data["error"] is None
    assert is_valid(data["session_id"]) and (session_id is None or data["session_id"] == session_id)
    assert isinstance(data["text"], str) and data["backend"] == "numpy"
    assert data["finish_reason"] in ("stop", "length")
    assert set(TOKEN_FIELDS) <= set(data["tokens"]) and all(
        isinstance(v, int) for v in data["tokens"].values()
    )
    assert data["tokens"]["generated"] >= 1 and data["tokens"]["prompt"] > data["tokens"]["cached"] >= 0
    assert set(TIMING_FIELDS) <= set(data["timings"])
    assert isinstance(data["retrieved"], list)
    for hit in data["retrieved"]:
        assert set(RETRIEVED_FIELDS) <= set(hit)


# issues 14 and 15: what a turn reports before its first token
PROGRESS = ("queued", "model_loading", "index_progress", "prefill")


def main_events(events: list[dict]) -> list[dict]:
    """The events of the original contract: session, retrieval, cache, deltas, result."""
    return [e for e in events if e["type"] not in PROGRESS]


def check_progress(events: list[dict], sid: str) -> None:
    """queued and model_loading come before the session (their id is null for a new one), prefill after
    the cache event and before the first delta, counting up to its total."""
    types = [e["type"] for e in events]
    start = types.index("session")
    assert set(types[:start]) <= {"queued", "model_loading", "index_progress"} and types[0] == "queued", types
    assert all(e["session_id"] in (sid, None) for e in events[:start])
    first_delta = types.index("delta") if "delta" in types else len(types) - 1
    prefill = [e for e in events if e["type"] == "prefill"]
    assert all(types.index("cache") < i < first_delta for i, t in enumerate(types) if t == "prefill"), types
    if prefill:
        done = [e["done"] for e in prefill]
        assert done == sorted(set(done)) and done[-1] == prefill[-1]["total"], prefill


def check_stream(events: list[dict], session_id: str | None = None) -> dict:
    """One turn's stream-json: session, retrieval, cache, deltas, then one result (returned); the
    progress events of issue 15 in their places."""
    main = main_events(events)
    assert [e["type"] for e in main[:3]] == ["session", "retrieval", "cache"], main[:3]
    assert main[-1]["type"] == "result"
    assert {e["type"] for e in main[3:-1]} <= {"delta"}
    sid = session_id or main[0]["session_id"]
    assert all(e["session_id"] == sid for e in main), "every event carries the session id"
    check_progress(events, sid)
    result = main[-1]
    check_result_object(result, sid)
    answer = "".join(e["text"] for e in main if e["type"] == "delta" and e["kind"] == "answer")
    assert answer == result["text"]
    cache = main[2]
    assert cache["cached_tokens"] == result["tokens"]["cached"]
    assert cache["prompt_tokens"] == result["tokens"]["prompt"]
    return result


def as_printed(reply: str) -> str:
    """What `text` output shows of a reply: the reply, ending with a newline unless it is empty."""
    return reply if not reply or reply.endswith("\n") else reply + "\n"


def show(session_id: str) -> dict:
    run = workbench("sessions", "show", session_id, "--json")
    assert run.code == 0, run
    return run.json()


def test_json_stream_json_and_text_across_processes(model: str, tmp_path: Path) -> None:
    repo = str(tmp_path)
    # 1. A new session, json output; every sampling flag is recorded as the session's sticky settings.
    first = workbench("-p", LONG_PROMPT, "--model", model, "--backend", "numpy", "--repo", repo,
                      "--system", "You are terse.", "--seed", "7", "--top-p", "0.9", *GREEDY,
                      "--output-format", "json")  # fmt: skip
    assert first.code == 0, first
    data = first.json()
    check_result_object(data)
    sid = data["session_id"]
    assert data["tokens"]["cached"] == 0 and data["message"] == 2
    settings = show(sid)["settings"]
    assert settings["system_prompt"] == "You are terse." and settings["rag"] is False
    assert (
        settings["sampling"] | {"temperature": 0.0, "top_p": 0.9, "seed": 7, "max_tokens": 8}
        == settings["sampling"]
    )

    # 2. Resume by a unique prefix in another process, prompt on stdin, stream-json: KV blocks are reused.
    second = workbench("--resume", sid[:12], "-p", "-", "--output-format", "stream-json", stdin="And then?\n")
    assert second.code == 0, second
    resumed = check_stream(second.lines(), sid)
    started = main_events(second.lines())[0]
    assert started["created"] is False and started["messages"] == 2
    assert resumed["tokens"]["cached"] > 0, resumed["tokens"]

    # 3. The same second turn recomputed from scratch (--no-cache) in a fork: the same greedy reply.
    fork = workbench("sessions", "fork", sid, "--at", "2", "--json")
    assert fork.code == 0, fork
    child = fork.json()["id"]
    reference = workbench("--resume", child, "-p", "And then?\n", "--no-cache", "--output-format", "json")
    assert reference.code == 0, reference
    assert reference.json()["tokens"]["cached"] == 0
    assert reference.json()["text"] == resumed["text"]

    # 4. --continue picks the latest session of the repo (the fork); --prompt-file; text output.
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("Summarise that in one line.\n", encoding="utf-8")
    third = workbench("--continue", "--repo", repo, "--prompt-file", str(prompt_file))
    assert third.code == 0, third
    messages = show(child)["messages"]
    assert len(messages) == 6 and messages[4]["content"] == "Summarise that in one line.\n"
    reply = messages[5]["content"]
    assert third.stdout == as_printed(reply), "text: the reply only"
    last_err = third.stderr.strip().splitlines()[-1]
    assert last_err.startswith(f"[session {child} · ") and "numpy" in last_err


def test_run_script_paragraphs_then_jsonl(model: str, tmp_path: Path) -> None:
    repo = str(tmp_path)
    script = tmp_path / "prompts.txt"
    script.write_text("What does the parser do?\nAnswer briefly.\n\n\nAnd the lexer?\n", encoding="utf-8")
    text = workbench("run", str(script), "--model", model, "--repo", repo, *GREEDY)
    assert text.code == 0, text
    summaries = [ln for ln in text.stderr.splitlines() if ln.startswith("[session ")]
    assert len(summaries) == 2
    sid = summaries[0].split()[1]
    session = show(sid)
    assert [m["content"] for m in session["messages"][::2]] == ["What does the parser do?\nAnswer briefly.",
                                                                 "And the lexer?"]  # fmt: skip
    replies = [m["content"] for m in session["messages"][1::2]]
    assert text.stdout == "\n".join(as_printed(r) for r in replies)

    # JSONL from stdin, options before and after the subcommand, continuing the same session.
    jsonl = '{"prompt": "First follow-up"}\n\n{"prompt": "Second follow-up"}\n'
    stream = workbench(
        "--output-format", "stream-json", "run", "-", "--continue", "--repo", repo, stdin=jsonl
    )
    assert stream.code == 0, stream
    events = stream.lines()
    cut = [i + 1 for i, e in enumerate(events) if e["type"] == "result"]
    assert len(cut) == 2
    check_stream(events[: cut[0]], sid)
    last = check_stream(events[cut[0] :], sid)
    assert last["message"] == 8 and last["tokens"]["cached"] > 0

    as_json = workbench(
        "run", "-", "--resume", sid, "--output-format", "json", stdin='{"prompt": "one more"}\n'
    )
    assert as_json.code == 0, as_json
    (obj,) = as_json.lines()
    check_result_object(obj, sid)


def test_rag_and_thinking_on(model: str, tmp_path: Path) -> None:
    (tmp_path / "parser.py").write_text(
        'def parse_config(text):\n    """Split a config file into key/value pairs."""\n'
        '    return dict(line.split("=", 1) for line in text.splitlines())\n',
        encoding="utf-8",
    )
    ask = ["--temperature", "0", "--max-tokens", "4", "--output-format", "stream-json"]
    before = workbench("-p", "how does parse_config work?", "--model", model, "--repo", str(tmp_path),
                       "--thinking", *ask)  # fmt: skip
    assert before.code == 0, before
    events = before.lines()
    sid = check_stream(events)["session_id"]
    retrieval = main_events(events)[1]
    assert retrieval["chunks"] == [] and "not indexed" in retrieval["skipped"], "no index yet: says so"
    settings = show(sid)["settings"]
    assert settings["rag"] is True and settings["thinking"] is True

    indexed = workbench("index", "--repo", str(tmp_path), "--json")
    assert indexed.code == 0, indexed
    after = workbench("--continue", "--repo", str(tmp_path), "-p", "and what does parse_config return?", *ask)
    assert after.code == 0, after
    events = after.lines()
    result = check_stream(events, sid)
    retrieval = main_events(events)[1]
    assert retrieval["skipped"] is None and retrieval["tokens"] > 0
    assert [c["path"] for c in retrieval["chunks"]] == ["parser.py"]
    refresh = [e for e in events if e["type"] == "index_progress"]  # the turn refreshed the index first
    assert refresh and refresh[0]["phase"] == "reading" and refresh[-1]["phase"] == "done"
    (hit,) = result["retrieved"]
    assert hit == {k: retrieval["chunks"][0][k] for k in RETRIEVED_FIELDS}
    assert (hit["start_line"], hit["end_line"], hit["symbol"]) == (1, 3, "parse_config")


def test_ctrl_c_mid_generation_records_the_partial_reply_and_exits_130(model: str, tmp_path: Path) -> None:
    args = ["-p", "Tell a very long story.", "--model", model, "--repo", str(tmp_path), "--no-rag",
            "--temperature", "0", "--max-tokens", "3500", "--output-format", "stream-json"]  # fmt: skip
    proc = subprocess.Popen(command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=env())  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    events = []
    for line in proc.stdout:
        events.append(json.loads(line))
        if events[-1]["type"] == "delta":
            proc.send_signal(signal.SIGINT)
            break
    events += [json.loads(line) for line in proc.stdout.read().splitlines()]
    stderr = proc.stderr.read()
    assert proc.wait(timeout=30) == 130, stderr
    result = events[-1]
    assert result["type"] == "result" and result["finish_reason"] == "cancelled"
    assert 1 <= result["tokens"]["generated"] < 3500
    reply = show(result["session_id"])["messages"][-1]
    assert reply["role"] == "assistant" and reply["status"] == "interrupted"
    assert reply["content"] == result["text"]
    assert reply["content"].startswith(next(e["text"] for e in events if e["type"] == "delta"))


BAD_INPUT = [
    (["-p", "hi", "--bogus"], "", 2, "--bogus"),
    (["-p", ""], "", 2, "empty prompt"),
    (["-p", "-"], "  \n\n", 2, "empty prompt (from stdin)"),
    (["--prompt-file", "{tmp}/missing.txt"], "", 2, "missing.txt"),
    (["-p", "hi", "--resume", "0123456789"], "", 3, "0123456789"),
    (["-p", "hi", "--resume", "not-an-id!"], "", 2, "not-an-id!"),
    (["-p", "hi", "--continue", "--repo", "{tmp}"], "", 3, "no session to continue"),
    (["-p", "hi", "--resume", "0123", "--continue"], "", 2, "--continue"),
    (["-p", "hi", "--model", "{tmp}/no-such-model"], "", 3, "no-such-model"),
    (["-p", "hi", "--temperature", "hot"], "", 2, "--temperature"),
    (["-p", "hi", "--max-tokens", "0"], "", 2, "--max-tokens"),
    (["-p", "hi", "--top-p", "1.5"], "", 2, "--top-p"),
    (["-p", "hi", "--repo", "{tmp}/nowhere"], "", 2, "nowhere"),
    (["-p", "hi", "--output-format", "xml"], "", 2, "xml"),
    (["run", "{tmp}/empty.txt"], "", 2, "has no prompts"),
    (["run", "{tmp}/bad.jsonl"], "", 2, "bad.jsonl:2"),
]


def test_bad_input_one_line_exit_code_and_nothing_stored(
    model: str, tmp_path: Path, redis_client: redis.Redis, workbench_env: Path
) -> None:
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"text": "no prompt key"}\n', encoding="utf-8")

    def attempt(case: tuple[list[str], str, int, str]) -> tuple:
        args, stdin, _, _ = case
        args = [a.replace("{tmp}", str(tmp_path)) for a in args]
        if "--model" not in args:  # a real model: each case fails for its own reason only
            args += ["--model", model]
        return case, workbench(*args, stdin=stdin)

    with ThreadPoolExecutor(max_workers=3) as pool:
        outcomes = list(pool.map(attempt, BAD_INPUT))
    for (_, _, code, names), run in outcomes:
        assert run.code == code, run
        lines = run.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("workbench: ") and names in lines[0], run
        assert run.stdout == "", run
    assert store_is_empty(redis_client, workbench_env)

    # A bad model with json output still ends with a result object (no session was created).
    run = workbench("-p", "hi", "--model", str(tmp_path / "no-such-model"), "--output-format", "stream-json")
    assert run.code == 3, run
    *progress, result = run.lines()
    assert [e["type"] for e in progress] == ["queued"] and progress[0]["session_id"] is None
    assert result["type"] == "result" and result["is_error"] is True and result["session_id"] is None
    assert "no-such-model" in result["error"]
    assert store_is_empty(redis_client, workbench_env)


def test_redis_unreachable_is_a_runtime_failure(model: str, tmp_path: Path) -> None:
    broken = {"REDIS_URL": f"unix://{tmp_path}/no-redis.sock"}
    for args in (["-p", "hi", "--model", model], ["sessions", "list"]):
        run = workbench(*args, extra_env=broken)
        assert run.code == 1, run
        (line,) = run.stderr.splitlines()
        assert line.startswith("workbench: cannot reach Redis") and "no-redis.sock" in line


def test_seed_makes_sampling_repeatable_across_processes(model: str, tmp_path: Path) -> None:
    sample = ["--model", model, "--repo", str(tmp_path), "--no-rag", "--temperature", "1.0",
              "--top-p", "0.95", "--max-tokens", "12", "--output-format", "json"]  # fmt: skip
    runs = [workbench("-p", "Pick some words.", *sample, "--seed", seed) for seed in ("11", "11", "12")]
    assert all(r.code == 0 for r in runs), runs
    first, again, other = (r.json() for r in runs)
    assert first["text"] == again["text"] and first["session_id"] != again["session_id"]
    assert other["text"] != first["text"]
