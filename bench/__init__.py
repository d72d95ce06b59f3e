"""Benchmarks: each prints a table beside the machine's limits measured in the same run."""

from core.env import set_blas_spin_default

set_blas_spin_default()  # before anything imports numpy
