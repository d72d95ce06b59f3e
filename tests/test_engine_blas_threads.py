"""Head-parallel prefill attention: each core takes its own kv heads with numpy's BLAS held to one
thread, and gives the same result as the reference; the BLAS thread count comes back afterwards, even
with several users at once; OpenBLAS's spin time is asked for only while it can still take effect."""

from __future__ import annotations

import os
import sys
import threading

import numpy as np
import pytest

from engine.backends import blas_threads, kernels, numpy_attention, numpy_backend
from tests.test_engine_backends import reference_attention

rng = np.random.default_rng(5)
needs_openblas = pytest.mark.skipif(blas_threads._functions() is None, reason="numpy links no OpenBLAS")


def f32(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


@pytest.fixture
def head_parallel(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bool, int]]:
    """Force the head-parallel path on small inputs; record, per block run, whether it used the thread
    pool itself and how many threads BLAS had."""
    monkeypatch.setattr(blas_threads, "short_spin", True)
    monkeypatch.setattr(numpy_attention, "HEAD_PARALLEL_MIN", 1)
    monkeypatch.setattr(numpy_attention, "HEAD_ROWS", 48)  # several row blocks, the last one partial
    calls: list[tuple[bool, int]] = []
    inner = numpy_attention._causal_blocks

    def recording(*args: object, threads: bool) -> None:
        calls.append((threads, blas_threads.threads()))
        inner(*args, threads=threads)  # type: ignore[arg-type]

    monkeypatch.setattr(numpy_attention, "_causal_blocks", recording)
    return calls


@needs_openblas
@pytest.mark.parametrize("c_loops", [True, False])
@pytest.mark.parametrize(("t", "s"), [(300, 300), (70, 340)])
def test_each_kv_head_on_its_own_thread_matches_the_reference(
    head_parallel: list, monkeypatch: pytest.MonkeyPatch, c_loops: bool, t: int, s: int
) -> None:
    if not c_loops:
        monkeypatch.setattr(kernels, "_lib", None)
        monkeypatch.setattr(kernels, "_tried", True)
    before = blas_threads.threads()
    q, k, v = f32(8, t, 16), f32(4, s, 16), f32(4, s, 16)
    got = numpy_backend.sdpa(q, k, v, 0.25, s - t)
    assert np.abs(got - reference_attention(q, k, v, 0.25, s - t)).max() < 1e-5
    assert head_parallel == [(False, 1)] * 4  # one run per kv head, BLAS single-threaded in each
    assert blas_threads.threads() == before


@needs_openblas
def test_decode_and_single_kv_head_keep_blas_threading(head_parallel: list) -> None:
    numpy_backend.sdpa(f32(4, 1, 16), f32(2, 9, 16), f32(2, 9, 16), 0.25, 8)  # decode: no blocks at all
    numpy_backend.sdpa(f32(4, 30, 16), f32(1, 30, 16), f32(1, 30, 16), 0.25, 0)  # nothing to spread
    assert head_parallel == [(True, blas_threads.threads())]


@needs_openblas
def test_blas_threads_come_back_after_the_last_of_several_users() -> None:
    set_threads = blas_threads._functions()[0]  # type: ignore[index]
    set_threads(2)
    inside, release = threading.Barrier(3), threading.Event()
    seen: list[int] = []

    def user() -> None:
        with blas_threads.single_threaded():
            inside.wait()
            release.wait()
            seen.append(blas_threads.threads())

    workers = [threading.Thread(target=user) for _ in range(2)]
    for w in workers:
        w.start()
    inside.wait()
    assert blas_threads.threads() == 1
    release.set()
    for w in workers:
        w.join()
    assert seen == [1, 1]  # the first to leave did not restore it under the second
    assert blas_threads.threads() == 2


@pytest.mark.parametrize(
    ("preset", "numpy_loaded", "short", "env_after"),
    [
        (None, False, True, str(blas_threads.SPIN_LOG2_CYCLES)),  # in time: asked for
        (None, True, False, None),  # numpy came first: OpenBLAS already spins long
        ("20", True, True, "20"),  # set before numpy by workbench/ or bench/
        ("28", False, False, "28"),  # the user's own choice is kept
    ],
)
def test_spin_time_is_asked_for_only_before_numpy_loads_openblas(
    monkeypatch: pytest.MonkeyPatch,
    preset: str | None,
    numpy_loaded: bool,
    short: bool,
    env_after: str | None,
) -> None:
    if preset is None:
        monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", preset)
    modules = dict(sys.modules)
    if not numpy_loaded:
        modules.pop("numpy", None)
    monkeypatch.setattr(sys, "modules", modules)
    assert blas_threads._set_spin() is short
    assert os.environ.get("OPENBLAS_THREAD_TIMEOUT") == env_after
