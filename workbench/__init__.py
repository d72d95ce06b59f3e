"""Workbench: the CLI and (next) the TUI over the session service."""

from core.env import set_blas_spin_default

set_blas_spin_default()  # before anything imports numpy
