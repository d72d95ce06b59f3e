"""`workbench sessions list|search|show|export|rm|fork|rename`, through real `workbench` processes."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from tests.headless_support import chat_model_dir, workbench

GREEDY = ["--temperature", "0", "--max-tokens", "6", "--no-rag"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(chat_model_dir(tmp_path_factory.getbasetemp()))


def make_sessions(model: str, tmp_path: Path) -> tuple[str, str, Path, Path]:
    """Two sessions in two repositories: a two-turn one about parsing, a one-turn one about caching."""
    repo_a, repo_b = tmp_path / "alpha", tmp_path / "beta"
    repo_a.mkdir()
    repo_b.mkdir()
    script = tmp_path / "script.jsonl"
    script.write_text('{"prompt": "Why does parse_config_file reject tabs?"}\n{"prompt": "Show the fix."}\n')
    first = workbench("run", str(script), "--model", model, "--repo", str(repo_a), *GREEDY,
                      "--output-format", "json")  # fmt: skip
    assert first.code == 0, first
    second = workbench("-p", "How big is the block cache?", "--model", model, "--repo", str(repo_b), *GREEDY,
                       "--output-format", "json")  # fmt: skip
    assert second.code == 0, second
    return first.lines()[0]["session_id"], second.json()["session_id"], repo_a, repo_b


def test_list_search_show_export(model: str, tmp_path: Path, redis_client: redis.Redis) -> None:
    parsing, caching, repo_a, _ = make_sessions(model, tmp_path)  # redis_client: an empty store

    listed = workbench("sessions", "list", "--json")
    assert listed.code == 0, listed
    assert [s["id"] for s in listed.json()] == [caching, parsing], "newest first"
    assert listed.json()[1]["message_count"] == 4 and listed.json()[1]["repo"] == str(repo_a)
    only_a = workbench("sessions", "list", "--repo", str(repo_a), "--json")
    assert [s["id"] for s in only_a.json()] == [parsing]
    text = workbench("sessions", "list", "-n", "1")
    assert text.code == 0 and text.stdout.splitlines()[0].startswith(caching)
    assert len(text.stdout.splitlines()) == 1

    found = workbench("sessions", "search", "fix", "--json")
    assert found.code == 0, found
    (hit,) = found.json()
    assert hit["session_id"] == parsing and hit["message"] == 3 and "fix" in hit["snippet"].lower()
    by_identifier_part = workbench("sessions", "search", "config")  # a part of parse_config_file
    assert by_identifier_part.code == 0 and by_identifier_part.stdout.startswith(parsing)
    nothing = workbench("sessions", "search", "zeppelin", "--json")
    assert nothing.code == 0 and nothing.json() == []

    shown = workbench("sessions", "show", parsing[:11], "--json")
    assert shown.code == 0, shown
    session = shown.json()
    assert session["id"] == parsing and [m["role"] for m in session["messages"]] == ["user", "assistant"] * 2
    human = workbench("sessions", "show", parsing)
    assert human.code == 0 and "Why does parse_config_file reject tabs?" in human.stdout
    assert f"`{parsing}`" in human.stdout

    md_file = tmp_path / "out" / "session.md"
    md_file.parent.mkdir()
    exported = workbench("sessions", "export", parsing, "-o", str(md_file))
    assert exported.code == 0 and exported.stdout == "", exported
    assert md_file.read_text(encoding="utf-8") == human.stdout
    as_json = workbench("sessions", "export", parsing, "--format", "json")
    assert as_json.code == 0 and json.loads(as_json.stdout)["messages"] == session["messages"]


def test_rename_fork_rm_and_bad_ids(model: str, tmp_path: Path, redis_client: redis.Redis) -> None:
    parsing, caching, _, _ = make_sessions(model, tmp_path)

    renamed = workbench("sessions", "rename", parsing, "Tabs", "in", "configs", "--json")
    assert renamed.code == 0 and renamed.json()["title"] == "Tabs in configs", renamed
    assert workbench("sessions", "search", "tabs", "--json").json()[0]["title"] == "Tabs in configs"

    forked = workbench("sessions", "fork", parsing, "--at", "2", "--json")
    assert forked.code == 0, forked
    child = forked.json()
    assert child["parent_id"] == parsing and child["fork_at"] == 2
    child_messages = workbench("sessions", "show", child["id"], "--json").json()["messages"]
    parent_messages = workbench("sessions", "show", parsing, "--json").json()["messages"]
    assert child_messages == parent_messages[:2]
    plain = workbench("sessions", "fork", caching)
    assert plain.code == 0 and plain.stdout.strip() != caching and len(plain.stdout.split()) == 1

    removed = workbench("sessions", "rm", caching, "--json")
    assert removed.code == 0 and removed.json()["deleted"] == caching, removed
    gone = workbench("sessions", "show", caching)
    assert gone.code == 3 and gone.stderr.startswith("workbench: no session") and caching in gone.stderr
    assert caching not in {s["id"] for s in workbench("sessions", "list", "--json").json()}

    ambiguous = workbench("sessions", "show", "0")  # every id of this era starts with 0
    assert ambiguous.code == 2 and "ambiguous" in ambiguous.stderr and parsing in ambiguous.stderr
    bad = [
        (["sessions", "rm", "zzzzzz"], 3),
        (["sessions", "rename", parsing, "   "], 2),
        (["sessions", "fork", parsing, "--at", "9"], 2),
        (["sessions", "fork", parsing, "--at", "two"], 2),
        (["sessions", "export", parsing, "--format", "pdf"], 2),
        (["sessions", "frobnicate"], 2),
        (["sessions", "search"], 2),
    ]
    with ThreadPoolExecutor(max_workers=3) as pool:
        runs = list(pool.map(lambda case: workbench(*case[0]), bad))
    for (_, code), run in zip(bad, runs, strict=True):
        assert run.code == code, run
        assert run.stderr.startswith("workbench: ") and len(run.stderr.splitlines()) == 1, run
