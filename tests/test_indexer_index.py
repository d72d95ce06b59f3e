"""Index.update / search / token_ids on a small fixture repo, with the real all-MiniLM-L6-v2 encoder."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from indexer import Index
from indexer.index import shared_encoder
from indexer.tokens import blob_key, decode_blob
from tests.indexer_support import ByteLevelTokenizer, expected_elements, vset_members, write_repo

# Each test here runs on one Redis and on a 3-master Redis Cluster (tests/conftest.py).
pytestmark = pytest.mark.redis_cluster

INDEXED = ["README.md", "app/server.py", "app/util.py", "cmd/main.go", "src/lib.rs", "web/cart.ts"]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return write_repo(tmp_path / "repo")


@pytest.fixture
def ix(repo: Path, redis_client: redis.Redis) -> Index:
    index = Index.open(repo, redis_client, encoder=shared_encoder())
    index.update()
    return index


def members(ix: Index) -> set[str]:
    return vset_members(ix.redis, ix.store.vset)


def test_initial_index_holds_exactly_the_chunks_of_the_indexed_files(ix: Index, repo: Path) -> None:
    assert sorted(ix.store.manifests()) == INDEXED
    assert members(ix) == expected_elements(repo, INDEXED)
    status = ix.status()
    assert status["files"] == "6" and int(status["chunks"]) == len(members(ix)) and status["pending"] == "0"
    attrs = ix.redis.vset().vgetattr(ix.store.vset, sorted(members(ix))[0])
    assert set(attrs) >= {"path", "lang", "start", "end", "symbol", "hash"}


def test_ignored_files_never_appear(ix: Index) -> None:
    paths = {m.rsplit("#", 1)[0] for m in members(ix)}
    assert not any(p.startswith(("secret/", "node_modules/")) or p.endswith(".log") for p in paths)
    assert ix.search("API_KEY do-not-index", k=20, mode="lexical") == []


def test_edit_create_delete_rename_follow_exactly(ix: Index, repo: Path) -> None:
    (repo / "app/util.py").write_text("def slugify(title):\n    return title.lower()\n")
    (repo / "app/new_module.py").write_text("def brand_new_function():\n    return 42\n")
    (repo / "cmd/main.go").unlink()
    (repo / "web/cart.ts").rename(repo / "web/basket.ts")
    stats = ix.update()
    now = ["README.md", "app/new_module.py", "app/server.py", "app/util.py", "src/lib.rs", "web/basket.ts"]
    assert sorted(ix.store.manifests()) == now
    assert members(ix) == expected_elements(repo, now)
    assert stats.files_removed == 2 and stats.files_changed == 3
    # The renamed file's chunks keep their vectors: only the edited and the new file were embedded.
    assert stats.vectors_reused == len(expected_elements(repo, ["web/basket.ts"]))


def test_unchanged_files_cost_no_embedding(ix: Index, repo: Path) -> None:
    before = ix.encoder.texts
    stats = ix.update()
    assert ix.encoder.texts == before and stats.files_unchanged == len(INDEXED) and stats.chunks_embedded == 0
    # Lines shifting above an unchanged function: its vector stays, only its attributes move.
    server = repo / "app/server.py"
    server.write_text("# a new comment line\n" + server.read_text())
    stats = ix.update(["app/server.py"])
    assert stats.chunks_embedded == 1  # the module docstring/imports window changed; every class did not
    assert stats.chunks_reattributed >= 2
    hit = ix.search("parse_http_header", k=1, mode="lexical")[0]
    assert (hit.symbol, hit.start_line) == ("parse_http_header", 20)
    assert members(ix) == expected_elements(repo, INDEXED)


def test_search_finds_by_meaning_and_by_identifier(ix: Index) -> None:
    top = ix.search("sum of quantities of the items in a shopping cart", k=3)
    assert top[0].path == "web/cart.ts"
    hit = ix.search("computeChecksum", k=1)[0]
    assert (hit.path, hit.symbol, hit.language) == ("cmd/main.go", "computeChecksum", "go")
    assert hit.text.startswith("func computeChecksum") and (hit.start_line, hit.end_line) == (5, 11)


def test_filter_by_path_and_language(ix: Index) -> None:
    query = "function that returns a value"
    assert {h.language for h in ix.search(query, k=10, lang="python")} == {"python"}
    assert {h.path for h in ix.search(query, k=10, path_glob="app/**")} <= {"app/server.py", "app/util.py"}
    assert {h.path for h in ix.search(query, k=10, path_glob="*.rs")} == {"src/lib.rs"}
    assert {h.path for h in ix.search(query, k=10, path_glob="cmd")} == {"cmd/main.go"}
    assert ix.search(query, k=10, lang="python", path_glob="web/**") == []
    for mode in ("vector", "lexical"):
        assert {h.language for h in ix.search("parse header", k=10, lang="python", mode=mode)} <= {"python"}


def test_pretokenized_blobs_decode_back_to_the_chunk_text(ix: Index, repo: Path) -> None:
    tokenizer = ByteLevelTokenizer([(repo / p).read_text() for p in INDEXED])
    made = ix.use_tokenizer(tokenizer)
    assert made == len(members(ix))
    assert ix.use_tokenizer(tokenizer) == 0  # kept for the next time
    for hit in ix.search("router dispatch", k=5):
        blob = ix.redis.get(blob_key(tokenizer.identity, hit.content_hash))
        assert blob is not None and len(blob) % 4 == 0
        assert tokenizer.decode(decode_blob(blob)) == hit.text
        calls = tokenizer.calls
        assert tokenizer.decode(ix.token_ids(hit, tokenizer)) == hit.text
        assert tokenizer.calls == calls  # served from the blob, not re-tokenized
    # Chunks added later are tokenized as they are indexed.
    (repo / "app/extra.py").write_text("def extra_helper():\n    return 'extra'\n")
    ix.update(["app/extra.py"])
    hit = ix.search("extra_helper", k=1, mode="lexical")[0]
    assert ix.redis.exists(blob_key(tokenizer.identity, hit.content_hash))


def test_bad_input_is_skipped_with_a_reason(ix: Index, repo: Path) -> None:
    (repo / "blob.dat").write_bytes(b"\x00\x01\x02binary")
    (repo / "latin1.py").write_bytes("caf\xe9 = 1\n".encode("latin-1"))
    with open(repo / "huge.py", "wb") as f:  # 100 MB, sparse: skipped by size without being read
        f.truncate(100 * 1024 * 1024)
    (repo / "loop").symlink_to(repo / "loop")
    locked = repo / "locked.py"
    locked.write_text("x = 1\n")
    locked.chmod(0)
    stats = ix.update()
    reasons = dict(e.decode().split(": ", 1) for e in ix.redis.lrange(ix.store.errors_key, 0, -1))
    assert reasons["blob.dat"].startswith("binary")
    assert reasons["latin1.py"].startswith("not UTF-8")
    assert reasons["huge.py"].startswith("larger than")
    assert reasons["loop"] == "symlink loop"
    import os

    if os.geteuid() != 0:  # root reads anything
        assert reasons["locked.py"].startswith("unreadable")
    assert sorted(ix.store.manifests()) == sorted([*INDEXED, "locked.py"] if os.geteuid() == 0 else INDEXED)
    assert stats.files_skipped >= 4
    # A file vanishing between the walk and the read is not an error: it simply is not indexed.
    assert ix.update(["app/does_not_exist.py"]).files_skipped == 0


def test_search_on_an_empty_or_unknown_index_is_empty(tmp_path: Path, redis_client: redis.Redis) -> None:
    (tmp_path / "empty").mkdir()
    ix = Index.open(tmp_path / "empty", redis_client, encoder=shared_encoder())
    assert ix.search("anything", k=5) == []
    assert ix.update().files_seen == 0


def test_a_second_writer_waits_for_the_first(ix: Index, redis_client: redis.Redis) -> None:
    import threading

    lease = ix.store.prefix + "lock"
    redis_client.set(lease, b"another-process", ex=60)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (ix.update(), done.set()))
    worker.start()
    assert not done.wait(0.5)  # blocked on the other writer's lease
    redis_client.delete(lease)
    assert done.wait(20)
    worker.join()
    assert not redis_client.exists(lease)  # released after the update
