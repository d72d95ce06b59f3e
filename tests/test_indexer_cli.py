"""`workbench index` and `workbench search` (text, --json, and `-` for one JSON line per stdin query)."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
import redis

from tests.indexer_support import write_repo
from workbench.cli import main


@pytest.fixture
def repo(tmp_path: Path, redis_client: redis.Redis) -> Path:
    return write_repo(tmp_path / "repo")


def test_index_then_status_as_json(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["index", "--repo", str(repo), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["files_changed"] == 6 and stats["chunks_embedded"] == stats["chunks_added"] > 0
    assert main(["index", "--repo", str(repo), "--status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (
        status["files"] == "6"
        and status["pending"] == "0"
        and status["model"].startswith("all-MiniLM-L6-v2@")
    )


def test_search_json_has_path_lines_symbol_and_score(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", "computeChecksum", "--repo", str(repo), "--k", "2", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["query"] == "computeChecksum" and len(answer["hits"]) == 2
    top = answer["hits"][0]
    assert (top["path"], top["start_line"], top["end_line"], top["symbol"]) == (
        "cmd/main.go",
        5,
        11,
        "computeChecksum",
    )
    assert top["score"] > answer["hits"][1]["score"] and top["language"] == "go"


def test_search_filters_and_text_output(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", "a function", "--repo", str(repo), "--lang", "rust"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("src/lib.rs:") and "Matrix" in out
    assert main(["search", "a function", "--repo", str(repo), "--path", "app/**", "--json"]) == 0
    paths = {h["path"] for h in json.loads(capsys.readouterr().out)["hits"]}
    assert paths and paths <= {"app/server.py", "app/util.py"}


def test_search_stdin_answers_each_query_with_one_json_line(
    repo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("fibonacci numbers\n\nslugify a title\nShoppingCart\n"))
    assert main(["search", "-", "--repo", str(repo), "--k", "3"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [a["query"] for a in lines] == ["fibonacci numbers", "slugify a title", "ShoppingCart"]
    assert [a["hits"][0]["symbol"] for a in lines] == ["fibonacci", "slugify", "ShoppingCart"]
    assert all(len(a["hits"]) == 3 for a in lines)


def test_bad_arguments_are_usage_errors(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", "x", "--repo", str(repo), "--k", "0"]) == 2
    assert "--k must be positive" in capsys.readouterr().err
    assert main(["search", "x", "--repo", str(repo / "missing")]) == 3


def test_index_watch_prints_one_json_line_per_update_and_stops_on_ctrl_c(repo: Path, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "workbench", "index", "--watch", "--json", "--repo", str(repo)]
    log = tmp_path / "watch-stderr.txt"  # with every thread's stack if it hangs (faulthandler on SIGABRT)
    # Started with SIGINT ignored, as a background job of a non-interactive shell (CI) is: Ctrl-C must
    # stop it all the same.
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                                env={**os.environ, "PYTHONFAULTHANDLER": "1"},
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # fmt: skip
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["files_changed"] == 6
        time.sleep(0.5)  # the observer is scheduled right after the first update
        (repo / "app" / "watched.py").write_text("def watched():\n    return 1\n")
        second = json.loads(proc.stdout.readline())
        assert second["files_changed"] == 1 and second["chunks_added"] == 1
        proc.send_signal(signal.SIGINT)
        try:
            assert proc.wait(timeout=30) == 0
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            proc.wait(timeout=10)
            raise AssertionError(f"the watcher did not stop on Ctrl-C:\n{log.read_text()[-6000:]}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_repository_is_a_positional_path_as_git_and_rg_take_it(
    repo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(repo)
    assert main(["index", ".", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["files_changed"] == 6
    monkeypatch.chdir(repo.parent)
    assert main(["search", "computeChecksum", str(repo), "--k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"][0]["path"] == "cmd/main.go"
    assert main(["index", str(repo), "--repo", str(repo.parent)]) == 2
    assert "two repositories given" in capsys.readouterr().err


def test_a_home_directory_is_indexed_only_when_confirmed(
    tmp_path: Path, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    home = write_repo(tmp_path / "home")
    monkeypatch.setenv("HOME", str(home))
    assert main(["index", str(home)]) == 2
    err = capsys.readouterr().err
    assert "is your home directory: indexing it would read 6 files" in err and "--yes" in err
    assert main(["search", "fibonacci", "--repo", str(home)]) == 2  # a search would index it too
    capsys.readouterr()
    assert main(["index", str(home), "--yes", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["files_changed"] == 6
    assert main(["search", "fibonacci", str(home), "--json"]) == 0  # indexed once: confirmed
    assert main(["index", "/"]) == 2
    assert "is the filesystem root" in capsys.readouterr().err
