"""The numpy backend's fused C loops (kernels.c): built once per machine with the system C compiler,
loaded with ctypes. `load()` returns None when they cannot be had (no compiler, WORKBENCH_NO_KERNELS
set): the backend then does the same work in plain numpy, slower, to the same tolerance.

    python -m engine.backends.kernels      # build now (make run / make test do), print the library

The library goes to $WORKBENCH_CACHE/kernels (default ~/.cache/workbench/kernels), named by a hash of
the source, the compiler, the flags and this CPU's feature flags: -march=native code must never run on
another CPU, and a changed kernels.c is rebuilt.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).parent  # every *.c here is one library; kernels.h is what they share


def sources() -> list[Path]:
    return sorted(SOURCE_DIR.glob("*.c"))


FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-ffp-contract=fast", "-fPIC", "-shared", "-pthread"]
_P, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float  # arrays go in as arr.ctypes.data
SIGNATURES = {
    "rms_norm": [_P, _P, _P, _I, _I, _I, _I, _I, _I, _F],
    "rope": [_P, _P, _P, _P, _I, _I, _I, _I, _I, _I, _P, _F],
    "silu_mul": [_P, _P, _I, _I, _I, _I],
    "softmax_keys": [_P, _P, _I, _I, _I, _I, _I, _I],
    "gemv": [_P, _P, _P, _I, _I, _I],
    "gemv_bf16": [_P, _P, _P, _I, _I, _I],
    "widen_bf16": [_P, _P, _I, _I],
    "attend_one": [_P, _P, _P, _P, _P, _I, _I, _I, _I, _I, _F, _I],
    # kernels_paged.c (the guard's functions return int64: engine/pages.py sets their restype)
    "attend_paged": [_P, _P, _P, _P, _P, _I, _I, _P, _P, _I, _I, _I, _I, _F, _I],
    "gather_pages": [_P, _P, _P, _P, _I, _I, _P, _P, _I, _I, _I, _I],
    "attend_paged_f16": [_P, _P, _P, _P, _P, _I, _I, _P, _P, _I, _I, _I, _I, _F, _I],
    "gather_pages_f16": [_P, _P, _P, _P, _I, _I, _P, _P, _I, _I, _I, _I],
    "guard_range": [_I, _I],
    "guard_release": [_I],
    "guard_lost": [_I],
    # kernels_quant.c
    "gemv_quant": [_P, _P, _P, _I, _P, _P, _I, _I, _I, _I, _I, _I],
    "dequant_rows": [_P, _P, _P, _I, _P, _I, _I, _I, _I, _I],
    "quant_vector_path": [],
    # kernels_q8act.c (precision "int8")
    "gemv_q8act": [_P, _P, _P, _I, _P, _P, _I, _I, _I, _I, _I, _I],
    "q8act_quantize": [_P, _I, _P, _P],
    # kernels_gemm.c (gemm_vector_path returns int64: callers set its restype)
    "gemm_bf16": [_P, _P, _P, _I, _I, _I, _I, _I],
    "gemm_vector_path": [],
    # kernels_amx.c (precision "bf16"; bf16_gemm_ready and gemm_bf16_amx return int64: numpy_bf16 sets it)
    "bf16_gemm_ready": [],
    "gemm_bf16_amx": [_P, _P, _P, _I, _I, _I, _I],
    "gemm_bf16_rounded_reference": [_P, _P, _P, _I, _I, _I],
    # kernels_fused.c (returns int64: numpy_decode sets its restype)
    "gemv_fused": [_P, _I, _P, _P, _I, _I, _I, _P, _F, _P, _P, _I],
}

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False


def _cache_dir() -> Path:
    env = os.environ.get("WORKBENCH_CACHE")
    if env:
        return Path(env).expanduser() / "kernels"
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "workbench" / "kernels"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def library_path(compiler: str) -> Path:
    texts = [path.read_bytes() for path in [*sources(), SOURCE_DIR / "kernels.h"]]
    identity = b"\0".join([*texts, " ".join([compiler, *FLAGS]).encode(), _cpu_flags().encode()])
    return _cache_dir() / f"kernels-{hashlib.blake2b(identity, digest_size=8).hexdigest()}.so"


def build() -> Path:
    """Compile the C files unless a library for this source, compiler and CPU exists; return its path."""
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (install gcc or set CC)")
    target = library_path(compiler)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".lock", "w") as lock:  # processes starting together: one compiles
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return target
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
        os.close(fd)
        cmd = [compiler, *FLAGS, *map(str, sources()), "-o", tmp, "-lm"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except OSError as exc:
            os.unlink(tmp)
            raise RuntimeError(f"cannot run the C compiler {compiler}: {exc.strerror}") from exc
        if proc.returncode != 0:
            os.unlink(tmp)
            raise RuntimeError(f"{compiler} could not build {SOURCE_DIR}/*.c: {proc.stderr.strip()[-2000:]}")
        os.replace(tmp, target)  # atomic: a reader sees the whole library or none
    return target


def load() -> ctypes.CDLL | None:
    """The loaded library (built on first use), or None, logged once, when it cannot be had."""
    global _lib, _tried
    if _tried:
        return _lib
    with _lock:
        if not _tried:
            if os.environ.get("WORKBENCH_NO_KERNELS"):
                log.info("WORKBENCH_NO_KERNELS set: the numpy backend uses plain numpy loops")
            else:
                try:
                    lib = ctypes.CDLL(str(build()))
                    for name, argtypes in SIGNATURES.items():
                        fn = getattr(lib, name)
                        fn.argtypes, fn.restype = argtypes, None
                    _lib = lib
                except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                    log.warning("numpy backend without its C loops, using plain numpy (%s)", exc)
            _tried = True
    return _lib


if __name__ == "__main__":
    try:
        print(build())
    except (RuntimeError, OSError) as exc:  # no compiler, or the cache dir is not writable
        raise SystemExit(f"engine.backends.kernels: {exc}") from None
