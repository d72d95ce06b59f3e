"""Benchmarks: each prints a table beside the machine's limits measured in the same run."""

import os

# before anything imports numpy; see engine/backends/blas_threads.py (SPIN_LOG2_CYCLES)
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")
