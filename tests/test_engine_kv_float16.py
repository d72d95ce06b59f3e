"""The optional float16 KV cache (load_model(kv_dtype="float16")): pages of half the bytes, read by the
same attention widened element by element, so the only change to the numbers is the keys' and values'
rounding to float16; float16 blocks restore as the pages themselves, bit for bit."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import engine
from engine.backends import kernels, numpy_attention
from engine.cache import KVCache
from engine.errors import EngineError
from kvstore.space import space_of
from kvstore.tiers import MemoryTier
from tests.fixtures.tiny_models import SPECS, TinyModel
from tests.kv_helpers import BS, greedy, history, load, store_with, tiny_model_dir

TinyModels = Callable[[str], TinyModel]
# Measured 1.4e-3..4.3e-3 on these fixtures (logits up to ~4.7): the float16 rounding of every key and
# value, compounded over the layers; the float32 cache stays within 1e-4 (test_engine_models).
FLOAT16_TOLERANCE = 1e-2


@pytest.fixture(params=["kernels", "plain numpy"])
def paths(request, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "plain numpy":
        monkeypatch.setattr(kernels, "load", lambda: None)
    elif kernels.load() is None:
        pytest.skip("the C kernels cannot be built here")
    return request.param


@pytest.mark.parametrize("name", sorted(SPECS))
def test_float16_pages_attend_as_float32_over_the_rounded_rows(
    tiny_model: TinyModels, name: str, paths: str
) -> None:
    tiny = tiny_model(name)
    model = engine.load_model(tiny.path, backend="numpy", kv_dtype="float16")
    c = model.config
    cache = KVCache(model.ops, c.num_hidden_layers, c.num_key_value_heads, c.head_dim, "float16", page_size=8)
    model.forward(tiny.prompt[:29], cache)  # 29 positions over 4 pages, the last one part-full
    assert cache.pages[0].k.dtype == np.float16
    rng = np.random.default_rng(0)
    for layer in range(c.num_hidden_layers):
        k_pages, v_pages = cache.fetch(layer)
        k_rows = np.asarray(k_pages).astype(np.float32)  # the rounded numbers, widened exactly
        v_rows = np.asarray(v_pages).astype(np.float32)
        s = k_rows.shape[1]
        for t in (1, 5):  # decode (C over the float16 pages, widened row by row), a prefill block (gathered)
            q = rng.standard_normal((c.num_attention_heads, t, c.head_dim)).astype(np.float32)
            paged = numpy_attention.sdpa(q, k_pages, v_pages, c.head_dim**-0.5, s - t)
            rows = numpy_attention.sdpa(q, k_rows, v_rows, c.head_dim**-0.5, s - t)
            assert np.array_equal(paged, rows)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_a_float16_cache_stays_within_its_rounding_of_transformers(tiny_model: TinyModels, name: str) -> None:
    tiny = tiny_model(name)
    model = engine.load_model(tiny.path, backend="numpy", kv_dtype="float16")
    assert model.kv_dtype == "float16" and model.make_cache().dtype == "float16"
    logits = model.logits(tiny.prompt)
    error = np.abs(logits - tiny.reference_logits).max()
    assert 0 < error <= FLOAT16_TOLERANCE  # not zero: the pages really are float16
    assert np.array_equal(logits.argmax(-1), tiny.reference_logits.argmax(-1))


def test_the_kv_dtype_is_part_of_the_fingerprint_and_a_bad_one_is_named(tiny_model: TinyModels) -> None:
    path = tiny_model("qwen3").path
    f32 = engine.load_model(path, backend="numpy")
    f16 = engine.load_model(path, backend="numpy", kv_dtype="float16")
    assert f32.kv_dtype == "float32" and f16.fingerprint != f32.fingerprint
    assert engine.load_model(path, backend="numpy", kv_dtype="float32").fingerprint == f32.fingerprint
    with pytest.raises(EngineError, match=r"kv_dtype 'bfloat16'.*float32, float16"):
        engine.load_model(path, backend="numpy", kv_dtype="bfloat16")


def test_mlx_keeps_a_float16_cache_too(tiny_model: TinyModels) -> None:
    tiny = tiny_model("qwen3")
    model = engine.load_model(tiny.path, backend="mlx", kv_dtype="float16")
    logits = model.logits(tiny.prompt)
    assert np.abs(logits - tiny.reference_logits).max() <= FLOAT16_TOLERANCE
    numpy_f16 = engine.load_model(tiny.path, backend="numpy", kv_dtype="float16")
    assert model.fingerprint == numpy_f16.fingerprint  # their blocks are the same numbers' keys


def test_float16_blocks_resume_a_float16_cache_bit_for_bit() -> None:
    model = load_f16()
    store = store_with([MemoryTier()])  # no dtype given: blocks take the cache's, float16
    ids = history(3 * BS + 5)
    cache = model.make_cache()
    last = model.forward(ids, cache)
    store.save(space_of(model), cache, ids, last)
    store.flush()
    want_tokens, want_logits = greedy(model, cache, last, 6)

    resumed = model.make_cache()
    res = store.restore(space_of(model), resumed, ids)
    assert res.cached_tokens == len(ids)
    assert resumed.shared_pages == len(resumed.pages) == 4  # the stored float16 bytes are the pages
    assert all(p.k.dtype == np.float16 for p in resumed.pages)
    got_tokens, got_logits = greedy(model, resumed, res.last_logits, 6)
    assert got_tokens == want_tokens
    assert all(np.array_equal(a, b) for a, b in zip(got_logits, want_logits, strict=True))


def load_f16():
    return engine.load_model(str(tiny_model_dir(0)), backend="numpy", kv_dtype="float16")


def test_float32_and_float16_caches_never_share_blocks() -> None:
    f32, f16 = load(tiny_model_dir(0)), load_f16()
    store = store_with([MemoryTier()])
    ids = history(2 * BS)
    cache = f32.make_cache()
    store.save(space_of(f32), cache, ids, f32.forward(ids, cache))
    store.flush()
    assert store.restore(space_of(f16), f16.make_cache(), ids).cached_tokens == 0
