"""The machine's limits, measured in-process, so every benchmark can quote its numbers against them.

Each function returns one float. `measure_limits()` runs them all (about 10 s) and `limits_table()`
renders the result as a markdown table. Redis figures need a client (e.g. core.redis_server.connect()).

    python -m bench.machine            # prints the table (Redis via core.redis_server if reachable)
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def _best_time(fn: Callable[[], Any], repeat: int = 5, min_time: float = 0.0) -> float:
    """Fastest of `repeat` runs (the machine is shared: the minimum is the least disturbed)."""
    fn()
    best = float("inf")
    start = time.perf_counter()
    for i in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        if i >= 1 and time.perf_counter() - start > max(min_time, 3.0):
            break
    return best


def memory_copy_gbs(mib: int = 256) -> float:
    """Memory bandwidth of a large float32 copy, counting bytes read + bytes written (GB/s)."""
    src = np.ones(mib * 2**20 // 4, dtype=np.float32)
    dst = np.empty_like(src)
    return 2 * src.nbytes / _best_time(lambda: np.copyto(dst, src)) / 1e9


def memory_read_gbs(mib: int = 256) -> float:
    """Memory read bandwidth of summing a large float32 array (GB/s)."""
    src = np.ones(mib * 2**20 // 4, dtype=np.float32)
    return src.nbytes / _best_time(lambda: src.sum()) / 1e9


def gemm_gflops(n: int = 1024) -> float:
    """numpy float32 matrix-multiply throughput, n x n @ n x n (GFLOP/s)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    return 2 * n**3 / _best_time(lambda: a @ b) / 1e9


def matvec_gbs(rows: int = 8192, cols: int = 16384) -> float:
    """Bandwidth of a float32 vector @ matrix over a 512 MiB matrix, larger than any L3 cache (GB/s)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((cols, rows), dtype=np.float32)  # [in, out], as the numpy backend stores it
    x = rng.standard_normal((1, cols), dtype=np.float32)
    return w.nbytes / _best_time(lambda: x @ w, repeat=10) / 1e9


def disk_write_gbs(directory: str | Path | None = None, mib: int = 256) -> float:
    """Sequential write of `mib` MiB including fsync, in a temp file under `directory` (GB/s)."""
    block = os.urandom(2**20)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        path = Path(tmp) / "disk_probe"
        t0 = time.perf_counter()
        with path.open("wb") as fh:
            for _ in range(mib):
                fh.write(block)
            fh.flush()
            os.fsync(fh.fileno())
        return mib * 2**20 / (time.perf_counter() - t0) / 1e9


def disk_read_gbs(directory: str | Path | None = None, mib: int = 256) -> float:
    """Sequential read of a `mib` MiB file after asking the OS to drop it from its cache (GB/s).

    Where the OS ignores the request (or the file system is in memory) this measures the page cache.
    """
    block = os.urandom(2**20)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        path = Path(tmp) / "disk_probe"
        with path.open("wb") as fh:
            for _ in range(mib):
                fh.write(block)
            fh.flush()
            os.fsync(fh.fileno())
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        t0 = time.perf_counter()
        with path.open("rb", buffering=0) as fh:
            buf = bytearray(8 * 2**20)
            while fh.readinto(buf):
                pass
        return mib * 2**20 / (time.perf_counter() - t0) / 1e9


def _redis_values(count: int, value_bytes: int) -> list[bytes]:
    return [os.urandom(16) * (value_bytes // 16) for _ in range(min(count, 4))]


def redis_set_per_s(client: Any, count: int = 64, value_bytes: int = 2**20) -> float:
    """SETs per second of `value_bytes` values (1 MiB: the figure is also MiB/s), one at a time."""
    values = _redis_values(count, value_bytes)
    keys = [f"wb:bench:machine:{i}" for i in range(count)]
    t0 = time.perf_counter()
    for i, key in enumerate(keys):
        client.set(key, values[i % len(values)], ex=60)
    elapsed = time.perf_counter() - t0
    return count / elapsed


def redis_get_per_s(client: Any, count: int = 64, value_bytes: int = 2**20) -> float:
    """GETs per second of `value_bytes` values (1 MiB: the figure is also MiB/s), one at a time."""
    keys = [f"wb:bench:machine:{i}" for i in range(count)]
    values = _redis_values(count, value_bytes)
    for i, key in enumerate(keys):
        client.set(key, values[i % len(values)], ex=60)
    t0 = time.perf_counter()
    for key in keys:
        client.get(key)
    elapsed = time.perf_counter() - t0
    client.delete(*keys)
    return count / elapsed


def measure_limits(redis_client: Any = None, directory: str | Path | None = None) -> dict[str, float]:
    """Every limit above, keyed by the names limits_table() shows."""
    limits = {
        "memory copy GB/s (read+write)": memory_copy_gbs(),
        "memory read GB/s": memory_read_gbs(),
        "GEMM GFLOP/s (numpy fp32, 1024^3)": gemm_gflops(),
        "matvec GB/s (numpy fp32, 512 MiB)": matvec_gbs(),
        "disk write GB/s (with fsync)": disk_write_gbs(directory),
        "disk read GB/s (cache dropped)": disk_read_gbs(directory),
    }
    if redis_client is not None:
        limits["Redis SET/s (1 MiB values)"] = redis_set_per_s(redis_client)
        limits["Redis GET/s (1 MiB values)"] = redis_get_per_s(redis_client)
    return limits


def limits_table(limits: dict[str, float] | None = None, redis_client: Any = None) -> str:
    """A markdown table of the machine's limits (measured now unless `limits` is given)."""
    limits = limits if limits is not None else measure_limits(redis_client)
    lines = [
        f"machine: {os.cpu_count()} CPUs, numpy {np.__version__}",
        "",
        "| limit | value |",
        "| --- | ---: |",
    ]
    lines += [f"| {name} | {value:,.1f} |" for name, value in limits.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    client = None
    try:
        from core.redis_server import connect

        client = connect()
        client.ping()
    except Exception as exc:  # the table is still useful without Redis
        print(f"(no Redis: {exc})")
        client = None
    print(limits_table(redis_client=client))
