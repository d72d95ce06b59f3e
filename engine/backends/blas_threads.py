"""numpy's BLAS threads, for work that brings its own threads.

The numpy backend's prefill attention runs each core on its own heads (one head's scores stay in that
core's cache); two cores each calling a BLAS that itself splits every product over both cores would
fight. OpenBLAS's thread count is process-wide, so `single_threaded()` sets it to 1 while such work
runs and restores it after; it nests safely across threads.

Its idle workers fight too: by default each spins for 2^28 cycles (~0.1 s) after a product before it
sleeps, taking a core from our threads (measured: head-parallel attention 20% slower than BLAS's own
threading, 25% faster once the workers sleep after 2^20 cycles, ~0.4 ms; that still covers the gaps
between a decode step's products, so decode keeps its spinning workers). OpenBLAS reads
OPENBLAS_THREAD_TIMEOUT once, when numpy loads it: this module sets it on import, which engine/__init__
does first, and `available()` is False when numpy was loaded before with the long spin.

numpy's Linux wheels link OpenBLAS (scipy-openblas: symbols `scipy_openblas_*64_`), found here among
the libraries the process has loaded. Without one (macOS Accelerate, an MKL build), `available()` is
False and callers keep BLAS's own threading.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SPIN_LOG2_CYCLES = 20  # OPENBLAS_THREAD_TIMEOUT: idle workers spin 2^this cycles, then sleep


def _set_spin() -> bool:
    """Ask for short-spinning OpenBLAS workers if numpy has not loaded OpenBLAS yet; whether they are."""
    preset = os.environ.get("OPENBLAS_THREAD_TIMEOUT")
    if preset is None:
        if "numpy" in sys.modules:
            return False  # too late: OpenBLAS already read its settings
        os.environ["OPENBLAS_THREAD_TIMEOUT"] = str(SPIN_LOG2_CYCLES)
        return True
    return preset.strip().isdigit() and int(preset) <= SPIN_LOG2_CYCLES + 2


short_spin = _set_spin()

# (set, get) symbol pairs: scipy-openblas (numpy wheels), ILP64 OpenBLAS, plain OpenBLAS
_SYMBOLS = [
    ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
    ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
    ("openblas_set_num_threads", "openblas_get_num_threads"),
]

_lock = threading.Lock()
_found: tuple | None = None
_looked = False
_depth = 0
_saved = 1


def _loaded_openblas() -> list[str]:
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:  # not Linux
        return []
    paths = {line.split()[-1] for line in maps.splitlines() if "openblas" in line.lower() and "/" in line}
    return sorted(p for p in paths if ".so" in Path(p).name)


def _functions() -> tuple | None:
    """(set_num_threads, get_num_threads) of the loaded OpenBLAS, or None."""
    global _found, _looked
    if not _looked:
        for path in _loaded_openblas():
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for set_name, get_name in _SYMBOLS:
                if hasattr(lib, set_name) and hasattr(lib, get_name):
                    set_fn, get_fn = getattr(lib, set_name), getattr(lib, get_name)
                    set_fn.argtypes, set_fn.restype = [ctypes.c_int], None
                    get_fn.argtypes, get_fn.restype = [], ctypes.c_int
                    _found = (set_fn, get_fn)
                    break
            if _found:
                break
        _looked = True
    return _found


def available() -> bool:
    """Whether callers may run BLAS single-threaded on threads of their own: its thread count can be
    set, and its idle workers do not spin for long."""
    return short_spin and _functions() is not None


def threads() -> int:
    """BLAS's current thread count (1 when it cannot be told)."""
    fns = _functions()
    return int(fns[1]()) if fns else 1


@contextmanager
def single_threaded() -> Iterator[None]:
    """BLAS calls run on the calling thread only, until the last nested user leaves."""
    global _depth, _saved
    fns = _functions()
    if fns is None:
        yield
        return
    with _lock:
        if _depth == 0:
            _saved = int(fns[1]())
            fns[0](1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                fns[0](_saved)
