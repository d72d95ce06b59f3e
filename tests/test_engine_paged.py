"""Attention through the page table equals attention over contiguous keys and values bit for bit
(float32), on every architecture fixture: decode (C over the pages in place), prefill (gathered), and
the plain-numpy path without the C kernels."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import engine
from engine.backends import kernels, numpy_attention
from engine.cache import KVCache
from tests.fixtures.tiny_models import SPECS, TinyModel

TinyModels = Callable[[str], TinyModel]


def run(model, page_size: int, ids: list[int], steps: int = 6) -> tuple[KVCache, list[np.ndarray]]:
    """Prefill `ids` into a cache of `page_size` pages, then greedy-decode `steps` tokens."""
    c = model.config
    cache = KVCache(model.ops, c.num_hidden_layers, c.num_key_value_heads, c.head_dim, page_size=page_size)
    logits = [model.forward(ids, cache)]
    for _ in range(steps):
        logits.append(model.forward([int(np.argmax(logits[-1]))], cache))
    return cache, logits


@pytest.fixture(params=["kernels", "plain numpy"])
def paths(request, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "plain numpy":
        monkeypatch.setattr(kernels, "load", lambda: None)
    elif kernels.load() is None:
        pytest.skip("the C kernels cannot be built here")
    return request.param


@pytest.mark.parametrize("name", sorted(SPECS))
def test_attention_through_pages_equals_the_contiguous_rows(tiny_model: TinyModels, name: str, paths) -> None:
    tiny = tiny_model(name)
    model = engine.load_model(tiny.path, backend="numpy")
    cache, _ = run(model, 8, tiny.prompt[:29], steps=3)  # 32 positions over 4 pages, the last one full
    c = model.config
    rng = np.random.default_rng(0)
    scale = c.head_dim**-0.5
    for layer in range(c.num_hidden_layers):
        k_pages, v_pages = cache.fetch(layer)
        k_rows, v_rows = np.asarray(k_pages), np.asarray(v_pages)
        s = k_rows.shape[1]
        for t in (1, 5):  # one new position (decode), five (a prefill's causal block)
            q = rng.standard_normal((c.num_attention_heads, t, c.head_dim)).astype(np.float32)
            paged = numpy_attention.sdpa(q, k_pages, v_pages, scale, s - t)
            contiguous = numpy_attention.sdpa(q, k_rows, v_rows, scale, s - t)
            assert np.array_equal(paged, contiguous)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_page_boundaries_do_not_change_a_single_logit(tiny_model: TinyModels, name: str, paths) -> None:
    tiny = tiny_model(name)
    model = engine.load_model(tiny.path, backend="numpy")
    _, paged = run(model, 8, tiny.prompt[:30])  # pages of 8 positions
    _, one_page = run(model, 4096, tiny.prompt[:30])  # every position in one page: contiguous rows
    for a, b in zip(paged, one_page, strict=True):
        assert np.array_equal(a, b)
