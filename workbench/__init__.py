"""Workbench: the CLI and (next) the TUI over the session service."""

import os

# before anything imports numpy; see engine/backends/blas_threads.py (SPIN_LOG2_CYCLES)
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")
