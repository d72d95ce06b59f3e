"""Every architecture and config layout against transformers: logits, cached decode, greedy output."""

from __future__ import annotations

from collections.abc import Callable
from itertools import islice

import numpy as np
import pytest

import engine
from tests.fixtures.tiny_models import SPECS, TinyModel

NUMPY_TOLERANCE = 1e-4
MLX_TOLERANCE = 1e-4  # mlx computes in float32 on CPU-only machines; measured ~5e-6
MLX_FP16_TOLERANCE = 5e-2  # where mlx has a GPU it computes in float16

TinyModels = Callable[[str], TinyModel]


def mlx_tolerance() -> float:
    from engine.backends import mlx_backend

    return MLX_TOLERANCE if mlx_backend.float_dtype == "float32" else MLX_FP16_TOLERANCE


def greedy(model: engine.Model, prompt: list[int], n: int) -> list[int]:
    """n greedy tokens at the token level: prefill once, then one token per step."""
    return [step.token for step in islice(engine.generate_tokens(model, prompt), n)]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_numpy_logits_match_transformers(tiny_model: TinyModels, name: str) -> None:
    tiny = tiny_model(name)
    model = engine.load_model(tiny.path, backend="numpy")
    logits = model.logits(tiny.prompt)
    assert logits.dtype == np.float32
    assert logits.shape == (len(tiny.prompt), model.config.vocab_size)
    assert np.abs(logits - tiny.reference_logits).max() <= NUMPY_TOLERANCE


@pytest.mark.parametrize("name", ["qwen3", "qwen3_tied_classic", "qwen2_tied_classic", "llama3_classic"])
def test_mlx_logits_match_transformers(tiny_model: TinyModels, name: str) -> None:
    tiny = tiny_model(name)
    model = engine.load_model(tiny.path, backend="mlx")
    assert model.backend == "mlx"
    assert np.abs(model.logits(tiny.prompt) - tiny.reference_logits).max() <= mlx_tolerance()


@pytest.mark.parametrize("backend", ["numpy", "mlx"])
def test_cached_decode_equals_full_forward(tiny_model: TinyModels, backend: str) -> None:
    tiny = tiny_model("qwen3")
    model = engine.load_model(tiny.path, backend=backend)
    full = model.logits(tiny.prompt)
    cache = model.make_cache()
    steps = [model.forward(tiny.prompt[:12], cache)]
    steps += [model.forward([token], cache) for token in tiny.prompt[12:]]
    assert cache.offset == len(tiny.prompt)
    assert np.abs(np.stack(steps) - full[11:]).max() <= 1e-5


@pytest.mark.parametrize("backend", ["numpy", "mlx"])
def test_chunked_prefill_equals_one_pass(tiny_model: TinyModels, backend: str) -> None:
    tiny = tiny_model("llama3_classic")
    model = engine.load_model(tiny.path, backend=backend)
    one_pass = model.forward(tiny.prompt, model.make_cache())
    model.prefill_chunk = 7  # 40 tokens -> 6 chunks, the last one partial
    chunked_cache = model.make_cache()
    chunked = model.forward(tiny.prompt, chunked_cache)
    assert chunked_cache.offset == len(tiny.prompt)
    assert np.abs(chunked - one_pass).max() <= 1e-5
    assert np.abs(model.logits(tiny.prompt) - tiny.reference_logits).max() <= 1e-4


@pytest.mark.parametrize("backend", ["numpy", "mlx"])
@pytest.mark.parametrize("name", ["qwen3", "qwen2_tied_classic", "llama3_classic"])
def test_last_layer_skips_the_rows_nobody_reads(tiny_model: TinyModels, backend: str, name: str) -> None:
    """In a prefill the last layer runs attention and MLP only for the rows whose logits are asked for,
    yet fills the cache exactly as computing every row does."""
    tiny = tiny_model(name)
    model = engine.load_model(tiny.path, backend=backend)
    block = model.network.layers[-1]
    rows_seen: list[int] = []
    mlp = block.mlp

    def recording_mlp(x: object, **fused: object) -> object:  # fused: the norm and residual it takes
        rows_seen.append(x.shape[0])  # type: ignore[attr-defined]
        return mlp(x, **fused)

    block.mlp = recording_mlp
    model.prefill_chunk = 16  # 40 tokens -> chunks of 16, 16 ("none") and 8 ("last")
    cache = model.make_cache()
    last = model.forward(tiny.prompt, cache)
    assert rows_seen == [1]  # not 16 + 16 + 8
    full = model.make_cache()
    for start in range(0, len(tiny.prompt), 16):  # every row of every layer, as Model.logits does
        model.network(tiny.prompt[start : start + 16], full, "all")
    n = len(tiny.prompt)
    for got, want in zip(cache.export(0, n), full.export(0, n), strict=True):
        assert np.abs(got - want).max() <= 1e-5
    tolerance = mlx_tolerance() if backend == "mlx" else NUMPY_TOLERANCE
    assert np.abs(last - tiny.reference_logits[-1]).max() <= tolerance


@pytest.mark.parametrize("name", sorted(SPECS))
def test_numpy_greedy_matches_transformers(tiny_model: TinyModels, name: str) -> None:
    tiny = tiny_model(name)
    model = engine.load_model(tiny.path, backend="numpy")
    assert greedy(model, tiny.prompt, len(tiny.greedy)) == tiny.greedy


@pytest.mark.parametrize("name", ["qwen3", "qwen2", "llama3_tied"])
def test_mlx_greedy_matches_transformers(tiny_model: TinyModels, name: str) -> None:
    tiny = tiny_model(name)
    model = engine.load_model(tiny.path, backend="mlx")
    assert greedy(model, tiny.prompt, len(tiny.greedy)) == tiny.greedy


def test_model_attributes_follow_the_contract(tiny_model: TinyModels) -> None:
    tiny = tiny_model("qwen3")
    model = engine.load_model(str(tiny.path), backend="numpy")
    assert (model.name, model.path, model.arch, model.backend) == (
        str(tiny.path),
        tiny.path,
        "qwen3",
        "numpy",
    )
    assert model.kv_dtype == "float32"
    c = model.config
    assert (c.num_hidden_layers, c.num_key_value_heads, c.head_dim, c.vocab_size) == (3, 2, 8, 384)
    assert c.max_position_embeddings == 128
    cache = model.make_cache()
    model.forward([1, 2, 3], cache)
    k, v = cache.export(0, 3)
    assert k.shape == v.shape == (3, 2, 3, 8)
    assert k.dtype == np.float32


def test_model_has_the_directory_tokenizer(tiny_model: TinyModels) -> None:
    tiny = tiny_model("qwen3")
    if not tiny.has_tokenizer:
        pytest.skip("tests.fixtures.tokenizers not available yet")
    model = engine.load_model(tiny.path, backend="numpy")
    ids = model.tokenizer.encode("def add(a, b):")
    assert ids and model.tokenizer.decode(ids) == "def add(a, b):"


def test_fingerprint_is_stable_and_tracks_weights_and_kv_dtype(tiny_model: TinyModels) -> None:
    first = engine.load_model(tiny_model("qwen3").path, backend="numpy")
    again = engine.load_model(tiny_model("qwen3").path, backend="numpy")
    other = engine.load_model(tiny_model("qwen2").path, backend="numpy")
    assert len(first.fingerprint) == 64
    assert first.fingerprint == again.fingerprint
    assert first.fingerprint != other.fingerprint
    from engine.backends import mlx_backend

    on_mlx = engine.load_model(tiny_model("qwen3").path, backend="mlx")
    assert (on_mlx.fingerprint == first.fingerprint) == (mlx_backend.float_dtype == "float32")
