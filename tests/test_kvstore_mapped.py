"""Disk blocks are mapped into the cache as its pages: a file deleted, truncated or rewritten by another
process while mapped never crashes the process nor feeds it wrong numbers; forks share pages."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kvstore.space import space_of
from kvstore.store import BlockStore
from kvstore.tiers import DiskTier
from kvstore.tiers.redis import RedisTier
from tests.kv_helpers import BS, greedy, history, reference, save_history, store_with, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0)


def resume(model, store: BlockStore, ids: list[int], damage=None, n: int = 12):
    """Restore `ids`, let `damage(store)` act on the files while they are mapped, then prefill what was
    not cached and greedy-decode n tokens."""
    cache = model.make_cache()
    res = store.restore(space_of(model), cache, ids)
    mapped = cache.shared_pages
    if damage is not None:
        damage()
    if cache.offset == len(ids) and res.last_logits is None:  # as engine.steps does: recompute the last
        cache.trim(len(ids) - 1)
    last = res.last_logits if res.last_logits is not None else model.forward(ids[cache.offset :], cache)
    tokens, logits = greedy(model, cache, last, n)
    return res, mapped, last, tokens, logits, cache


def assert_exact(model, ids: list[int], last, tokens, logits) -> None:
    ref_last, ref_tokens, ref_logits = reference(model, ids, len(tokens))
    assert tokens == ref_tokens
    assert np.abs(last - ref_last).max() <= 1e-4
    assert max(np.abs(a - b).max() for a, b in zip(logits, ref_logits, strict=True)) <= 1e-4


def saved(model, home: Path, n_tokens: int) -> tuple[DiskTier, list[int], list[Path]]:
    tier = DiskTier(home / "kv", 1 << 30)
    ids = history(n_tokens)
    save_history(model, store_with([tier]), ids, with_logits=False)
    paths = [tier._path(k) for k in store_with([tier]).session_keys(space_of(model), ids)]
    return tier, ids, [p for p in paths if p.exists()]  # a history of whole blocks has no tail record


def by_another_process(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_restored_disk_blocks_are_the_mapped_files(model, workbench_env) -> None:
    tier, ids, paths = saved(model, workbench_env, 3 * BS + 7)
    res, mapped, last, tokens, logits, cache = resume(model, store_with([tier]), ids)
    assert res.by_tier == {"disk": len(ids)} and mapped == 4
    for page, path in zip(cache.pages[:3], paths[:3], strict=True):  # the tail page was copied (trim)
        assert page.source.source.path == path  # the page views that file's mapping
    assert_exact(model, ids, last, tokens, logits)


def test_a_file_deleted_while_mapped_is_still_read_exactly(model, workbench_env, caplog) -> None:
    tier, ids, paths = saved(model, workbench_env, 4 * BS)
    code = f"import os\nfor p in {[str(p) for p in paths]!r}: os.unlink(p)"
    with caplog.at_level(logging.WARNING, logger="engine.model"):
        _, mapped, last, tokens, logits, _ = resume(
            model, store_with([tier]), ids, lambda: by_another_process(code)
        )
    assert mapped == 4 and not any(p.exists() for p in paths)
    assert not any("recomputing" in r.getMessage() for r in caplog.records)  # nothing was lost
    assert_exact(model, ids, last, tokens, logits)


@pytest.mark.parametrize("how", ["truncate", "rewrite_in_place"])
def test_a_file_changed_under_its_mapping_is_recomputed_not_used(model, workbench_env, caplog, how) -> None:
    tier, ids, paths = saved(model, workbench_env, 4 * BS)
    victim = str(paths[1])
    if how == "truncate":
        code = f"import os; os.truncate({victim!r}, 300)"
    else:  # the same size, one byte different, written through the same inode
        flip = "d = bytearray(open(p, 'rb').read()); d[len(d) // 2] ^= 0x40"
        code = f"p = {victim!r}\n{flip}\nopen(p, 'wb').write(d)"
    with caplog.at_level(logging.WARNING, logger="engine.model"):
        res, mapped, last, tokens, logits, cache = resume(
            model, store_with([tier]), ids, lambda: by_another_process(code)
        )
    assert mapped == 4 and res.cached_tokens == len(ids)
    assert any("recomputing" in r.getMessage() for r in caplog.records)
    assert cache.shared_pages == 1  # the first block is still mapped; the rest was recomputed
    assert_exact(model, ids, last, tokens, logits)


def test_touching_a_truncated_mapping_reads_zeros_instead_of_crashing(model, workbench_env) -> None:
    tier, ids, paths = saved(model, workbench_env, 2 * BS)
    cache = model.make_cache()
    store_with([tier]).restore(space_of(model), cache, ids)
    page = cache.pages[0]
    by_another_process(f"import os; os.truncate({str(paths[0])!r}, 0)")
    assert float(np.abs(np.asarray(page.k)).sum()) == 0.0  # SIGBUS turned into zero pages by the guard
    assert cache.lost_from() == 0


def test_forks_share_the_pages_of_their_common_history(model, workbench_env, redis_client) -> None:
    shared = history(3 * BS)
    a, b = shared + history(BS + 5, seed=1), shared + history(9, seed=2)
    store = store_with([RedisTier(redis_client)])
    for ids in (a, b):
        save_history(model, store, ids)
    fresh = store_with([RedisTier(redis_client)])  # as a new process: only Redis has the blocks
    res_a, mapped_a, *rest_a, cache_a = resume(model, fresh, a)
    res_b, mapped_b, *rest_b, cache_b = resume(model, fresh, b)
    assert res_a.by_tier == {"redis": len(a)}
    assert (mapped_a, mapped_b) == (5, 4)  # every block and tail a page over the bytes Redis sent
    assert res_b.by_tier == {"memory": 3 * BS, "redis": len(b) - 3 * BS}  # the shared blocks: not read again
    assert all(cache_a.pages[i].k is cache_b.pages[i].k for i in range(3))
    assert_exact(model, a, *rest_a)
    assert_exact(model, b, *rest_b)


def test_without_the_c_guard_mapped_blocks_are_copied_not_viewed(model, workbench_env, monkeypatch) -> None:
    from engine.backends import kernels

    tier, ids, _ = saved(model, workbench_env, 3 * BS + 7)
    monkeypatch.setattr(kernels, "load", lambda: None)  # as with WORKBENCH_NO_KERNELS
    res, mapped, last, tokens, logits, _ = resume(model, store_with([tier]), ids)
    assert res.cached_tokens == len(ids) and mapped == 0  # nothing could be guarded: every block copied
    assert_exact(model, ids, last, tokens, logits)
