"""The numpy backend's C loops (engine/backends/kernels.c) and the plain-numpy loops they replace give
the same results, on the views the models pass (q inside the fused qkv output, transposed heads, the
two halves of gate_up, causal blocks with an offset); and without a compiler the backend still works."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from engine.backends import kernels, numpy_attention, numpy_backend, numpy_threads

rng = np.random.default_rng(11)


def f32(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


class CountingLib:
    """The real library, counting calls: a comparison where both runs took numpy would prove nothing."""

    def __init__(self, lib: object) -> None:
        self.lib, self.calls = lib, 0

    def __getattr__(self, name: str) -> Callable:
        fn = getattr(self.lib, name)

        def counted(*args: object) -> None:
            self.calls += 1
            fn(*args)

        return counted


@pytest.fixture
def both_paths(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Callable[[], np.ndarray]], tuple]]:
    """Run a computation with the C loops, then with plain numpy; inputs big enough for the threads."""
    lib = kernels.load()
    assert lib is not None, "the C loops must build on this machine (gcc is part of the set-up)"
    monkeypatch.setattr(numpy_threads, "PARALLEL_MIN_ELEMENTS", 1000)

    def run(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        counting = CountingLib(lib)
        monkeypatch.setattr(kernels, "_lib", counting)
        with_c = fn()
        assert counting.calls > 0, "the C loops were not used"
        monkeypatch.setattr(kernels, "_lib", None)
        plain = fn()
        monkeypatch.setattr(kernels, "_lib", lib)
        return with_c, plain

    yield run


def close(a: np.ndarray, b: np.ndarray, tol: float = 1e-5) -> bool:
    return a.shape == b.shape and float(np.abs(a - b).max()) <= tol * max(1.0, float(np.abs(b).max()))


def test_rms_norm_rows_and_head_views(both_paths) -> None:
    qkv = rng.standard_normal((37, (6 + 2 * 2) * 16)).astype(np.float32)
    q = qkv[:, : 6 * 16].reshape(37, 6, 16)  # [T, H, D] view with the qkv row stride
    w16, w96 = rng.standard_normal(16).astype(np.float32), rng.standard_normal(96).astype(np.float32)
    assert close(*both_paths(lambda: numpy_backend.rms_norm(q, w16, 1e-6)))
    assert close(*both_paths(lambda: numpy_backend.rms_norm(qkv[:, :96], w96, 1e-6)))


def test_rope_reads_transposed_heads(both_paths) -> None:
    x = rng.standard_normal((45, 6, 32)).astype(np.float32).transpose(1, 0, 2)  # [H, T, D] view
    inv_freq = (1.0 / 10000 ** (np.arange(0, 32, 2) / 32)).astype(np.float32)
    assert close(*both_paths(lambda: numpy_backend.rope(x, 123, inv_freq)))


def test_rope_with_head_norm_in_one_pass(both_paths) -> None:
    qkv = rng.standard_normal((45, (6 + 2 * 2) * 32)).astype(np.float32)
    q = qkv[:, : 6 * 32].reshape(45, 6, 32).transpose(1, 0, 2)  # [H, T, D] view inside qkv
    inv_freq = (1.0 / 10000 ** (np.arange(0, 32, 2) / 32)).astype(np.float32)
    w = rng.standard_normal(32).astype(np.float32)
    fused = both_paths(lambda: numpy_backend.rope(q, 7, inv_freq, w, 1e-6))
    assert close(*fused)
    composed = numpy_backend.rope(numpy_backend.rms_norm(q, w, 1e-6), 7, inv_freq)
    assert close(fused[0], composed)


def test_silu_mul_on_the_halves_of_gate_up(both_paths) -> None:
    gate_up = (4 * rng.standard_normal((29, 2 * 40))).astype(np.float32)
    got = both_paths(lambda: numpy_backend.silu_mul(gate_up[:, :40], gate_up[:, 40:]))
    assert close(*got)


@pytest.mark.parametrize(("t", "s"), [(300, 300), (70, 340), (5, 5)])
def test_causal_blocks_softmax(both_paths, monkeypatch: pytest.MonkeyPatch, t: int, s: int) -> None:
    monkeypatch.setattr(numpy_attention, "ATTENTION_ROWS", 48)  # several blocks, the last one partial
    q, k, v = f32(8, t, 16), f32(2, s, 16), f32(2, s, 16)
    assert close(*both_paths(lambda: numpy_backend.sdpa(q, k, v, 0.25, s - t)))


def test_large_scores_take_the_max_subtracting_path_in_both(both_paths) -> None:
    q, k, v = f32(4, 40, 8), f32(2, 40, 8), f32(2, 40, 8)
    assert close(*both_paths(lambda: numpy_backend.sdpa(30 * q, 30 * k, v, 1.0, 0)))  # scores ~ +-1000


def test_without_a_compiler_the_backend_falls_back_to_numpy(
    monkeypatch: pytest.MonkeyPatch, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(kernels, "_lib", None)
    monkeypatch.setattr(kernels, "_tried", False)
    with caplog.at_level(logging.WARNING, logger="engine.backends.kernels"):
        assert kernels.load() is None
    assert "plain numpy" in caplog.text and "no-such-compiler" in caplog.text
    assert not list((tmp_path / "cache" / "kernels").glob("*.tmp"))  # no half-built library left
    x = rng.standard_normal((4, 8)).astype(np.float32)
    expected = x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-6)
    assert close(numpy_backend.rms_norm(x, np.ones(8, np.float32), 1e-6), expected.astype(np.float32))


def test_the_library_is_rebuilt_for_a_changed_source(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    first = kernels.build()
    assert first.exists() and first.parent == tmp_path / "kernels"
    source_dir = tmp_path / "src"
    source_dir.mkdir()
    for path in [*kernels.sources(), kernels.SOURCE_DIR / "kernels.h"]:
        (source_dir / path.name).write_bytes(path.read_bytes())
    (source_dir / "kernels.c").write_text((source_dir / "kernels.c").read_text() + "\n/* changed */\n")
    monkeypatch.setattr(kernels, "SOURCE_DIR", source_dir)
    second = kernels.build()
    assert second.exists() and second != first


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(("rows", "cols"), [(301, 37), (5, 8), (1030, 64)])
def test_decode_matrix_vector_product_on_the_pool(
    monkeypatch: pytest.MonkeyPatch, threads: int, rows: int, cols: int
) -> None:
    counting = CountingLib(kernels.load())
    monkeypatch.setattr(kernels, "_lib", counting)
    monkeypatch.setattr(numpy_threads, "DECODE_THREADS", threads)
    x, w, b = f32(1, cols), f32(rows, cols), f32(rows)
    got = numpy_backend.linear(x, w, b)
    assert counting.calls == 1
    expected = x.astype(np.float64) @ w.T.astype(np.float64) + b
    assert got.shape == (1, rows) and close(got, expected.astype(np.float32))
    numpy_backend.linear(f32(2, cols), w)
    assert counting.calls == 1  # two rows (prefill) stay with BLAS


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(6, 3, 16), (4, 2, 128), (8, 8, 64)])
def test_decode_attention_on_the_pool_reads_cache_views(
    monkeypatch: pytest.MonkeyPatch, threads: int, heads: int, kv_heads: int, dim: int
) -> None:
    from tests.test_engine_backends import reference_attention

    monkeypatch.setattr(numpy_threads, "DECODE_THREADS", threads)
    cache_k, cache_v = f32(kv_heads, 64, dim), f32(kv_heads, 64, dim)
    k, v, q = cache_k[:, :37], cache_v[:, :37], f32(heads, 1, dim)  # the first 37 of 64 positions
    counting = CountingLib(kernels.load())
    monkeypatch.setattr(kernels, "_lib", counting)
    got = numpy_backend.sdpa(q, k, v, dim**-0.5, 36)
    assert counting.calls == 1
    assert np.abs(got - reference_attention(q, k, v, dim**-0.5, 36)).max() < 1e-5


def _pool_in_forked_child(conn: object) -> None:
    x, w = np.ones((1, 64), np.float32), np.ones((512, 64), np.float32)
    conn.send(numpy_backend.linear(x, w).tolist())  # type: ignore[attr-defined]


def test_the_decode_pool_works_in_a_forked_child(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its workers stay with the parent on fork: the child must start its own, not wait for them."""
    import multiprocessing

    monkeypatch.setattr(numpy_threads, "DECODE_THREADS", 2)
    numpy_backend.linear(f32(1, 64), f32(512, 64))  # the parent's workers exist now
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_pool_in_forked_child, args=(child,))
    proc.start()
    got = parent.recv() if parent.poll(30) else None
    proc.join(5)
    if proc.is_alive():
        proc.kill()
    assert got == [[64.0] * 512]


def test_remembered_addresses_follow_the_array_not_its_id() -> None:
    """Weights' addresses are remembered by id; a new array that reuses a dead one's id gets its own."""
    before = len(numpy_threads.lasting)  # other tests' live models keep their own entries
    for n in range(200):
        a = np.full(1000 + n, n, dtype=np.float32)
        assert numpy_threads.lasting_address(a) == a.ctypes.data
        assert numpy_threads.lasting_address(a) == a.ctypes.data  # the remembered one
        del a
    assert len(numpy_threads.lasting) < before + 10  # entries leave with their arrays
