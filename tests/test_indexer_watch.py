"""Watch mode: editor saves, deletes, moves, directory renames and mass changes reach the Vector Set."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from indexer import Index
from indexer.index import shared_encoder
from indexer.watch import Watcher
from tests.indexer_support import expected_elements, vset_members, write_repo


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def indexed_files(root: Path) -> list[str]:
    from indexer.scan import scan

    return scan(root).files


def in_sync(ix: Index) -> Callable[[], bool]:
    """True once the set holds exactly the chunks of the files on disk now."""

    def check() -> bool:
        files = indexed_files(ix.root)
        return sorted(ix.store.manifests()) == files and vset_members(
            ix.redis, ix.store.vset
        ) == expected_elements(ix.root, files)

    return check


@pytest.fixture
def watched(tmp_path: Path, redis_client: redis.Redis) -> Iterator[tuple[Index, Watcher]]:
    repo = write_repo(tmp_path / "repo")
    ix = Index.open(repo, redis_client, encoder=shared_encoder())
    watcher = Watcher(ix, debounce=0.05).start()
    assert watcher.wait_idle(60)
    yield ix, watcher
    watcher.stop()


def test_atomic_save_create_delete_and_move(watched: tuple[Index, Watcher]) -> None:
    ix, watcher = watched
    repo = ix.root
    assert in_sync(ix)()
    # An editor's atomic save: write a temp file, then rename it over the target.
    tmp = repo / "app" / ".util.py.swp"
    tmp.write_text("def slugify(title):\n    return title.replace(' ', '_')\n")
    os.replace(tmp, repo / "app" / "util.py")
    (repo / "app" / "fresh.py").write_text("def fresh_function():\n    return 'fresh'\n")
    (repo / "cmd" / "main.go").unlink()
    (repo / "src" / "lib.rs").rename(repo / "src" / "matrix.rs")
    assert wait_for(in_sync(ix)), "the set did not follow the edits"
    assert not any(m.startswith("app/.util.py.swp") for m in vset_members(ix.redis, ix.store.vset))
    hit = ix.search("fresh_function", k=1, mode="lexical")[0]
    assert hit.path == "app/fresh.py"
    assert watcher.errors == 0


def test_directory_rename_and_delete(watched: tuple[Index, Watcher]) -> None:
    ix, _ = watched
    repo = ix.root
    (repo / "app").rename(repo / "application")
    assert wait_for(in_sync(ix))
    assert {p.split("/")[0] for p in ix.store.manifests()} >= {"application"}
    assert not any(p.startswith("app/") for p in ix.store.manifests())
    import shutil

    shutil.rmtree(repo / "web")
    assert wait_for(in_sync(ix))
    assert not any(p.startswith("web/") for p in ix.store.manifests())


def test_mass_change_is_batched_and_the_latest_content_wins(watched: tuple[Index, Watcher]) -> None:
    ix, watcher = watched
    repo = ix.root
    batches = watcher.batches
    (repo / "gen").mkdir()
    for i in range(150):  # a branch switch touching many files at once
        (repo / "gen" / f"mod_{i}.py").write_text(f"def generated_{i}():\n    return {i}\n")
    # The same file rewritten quickly: only its final content may remain.
    for version in range(5):
        (repo / "app" / "util.py").write_text(f"def version_{version}():\n    return {version}\n")
    assert wait_for(in_sync(ix), timeout=60)
    assert watcher.batches - batches < 20
    assert [h.symbol for h in ix.search("version_4", k=1, mode="lexical")] == ["version_4"]
    assert all(h.symbol != "version_0" for h in ix.search("version_0", k=5, mode="lexical"))


def test_status_is_published_for_the_tui_and_cli(watched: tuple[Index, Watcher]) -> None:
    ix, watcher = watched
    (ix.root / "app" / "status_probe.py").write_text("def probe():\n    return 1\n")
    assert wait_for(lambda: ix.status().get("files") == "7")
    assert watcher.wait_idle(20)
    status = ix.redis.hgetall(ix.store.status_key)
    assert {k.decode() for k in status} >= {"files", "chunks", "pending", "last_update", "errors", "state"}
    assert status[b"pending"] == b"0" and status[b"state"] == b"watching"
    assert abs(float(status[b"last_update"]) - time.time()) < 30
    assert int(status[b"chunks"]) == len(vset_members(ix.redis, ix.store.vset))


def test_ignored_paths_and_git_internals_never_enter(watched: tuple[Index, Watcher]) -> None:
    ix, _ = watched
    repo = ix.root
    (repo / "debug2.log").write_text("ignored by *.log\n")
    (repo / ".git").mkdir()
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (repo / "secret" / "more.py").write_text("TOKEN = 'x'\n")
    (repo / "app" / "visible.py").write_text("def visible():\n    return 1\n")
    assert wait_for(lambda: "app/visible.py" in ix.store.manifests())
    assert wait_for(in_sync(ix))
    assert not any(p.startswith((".git", "secret")) or p.endswith(".log") for p in ix.store.manifests())


def test_a_file_written_during_the_first_pass_is_indexed_after_it(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    from indexer.progress import Progress
    from tests.indexer_support import write_many

    repo = write_many(tmp_path / "repo", 40)
    ix = Index.open(repo, redis_client, encoder=shared_encoder())
    written: list[str] = []

    def mid_pass(p: Progress) -> None:
        # The scan is over once embedding starts: these edits can only arrive as watch events.
        if p.phase == "embedding" and not written:
            (repo / "late.py").write_text("def written_mid_pass():\n    return 1\n")
            (repo / "pkg0" / "mod_0.py").write_text("def rewritten_mid_pass():\n    return 2\n")
            written.append("late.py")

    watcher = Watcher(ix, debounce=0.05, progress=mid_pass).start()
    try:
        assert watcher.wait_idle(60) and written
        assert wait_for(in_sync(ix))
        assert ix.search("written_mid_pass", k=1, mode="lexical")[0].path == "late.py"
        assert ix.search("rewritten_mid_pass", k=1, mode="lexical")[0].path == "pkg0/mod_0.py"
    finally:
        watcher.stop()
