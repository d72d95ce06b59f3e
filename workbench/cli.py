"""`workbench`: the command line. A thin shell over the session service and the other packages.

Each command family lives in `workbench/cmd_<name>.py` with `register(subparsers)`; its parsers set
`func=handler`, and `handler(args) -> int` returns the exit code. Expected failures are raised as
`WorkbenchError` (or engine errors) and printed as one line: `workbench: <message>`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from core.env import env_choice
from core.errors import UsageError, WorkbenchError
from sessions.options import KV_DTYPE_CHOICES, KV_DTYPE_ENV, PRECISION_ENV
from workbench import headless

COMMAND_MODULES = [
    "workbench.cmd_doctor",
    "workbench.cmd_redis",
    "workbench.cmd_cache",
    "workbench.cmd_models",
    "workbench.cmd_sessions",
    "workbench.cmd_run",
    "workbench.cmd_index",
    "workbench.cmd_serve",
]


PRECISIONS = ("fp32", "int8", "bf16")  # engine/precision.py's (engine is not imported for a --help)


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (exit 2, one line) instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="workbench",
        description="A terminal workbench for a local coding assistant.",
    )
    parser.set_defaults(func=None)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    headless.add_arguments(parser)
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="how models compute on numpy: fp32 exact (default); int8: a quantized (MLX 4/8-bit) model's "
        "decode with int8 activations; bf16: a bf16 model's prefill with bf16 activations on the CPU's "
        "matrix unit (Intel AMX); both faster, slightly different numbers; for this process and its "
        f"workers (${PRECISION_ENV})",
    )
    parser.add_argument(
        "--kv-dtype",
        choices=KV_DTYPE_CHOICES,
        help="the KV cache's dtype: float32 exact (default), float16 (the cache in memory and its blocks: "
        "half the bytes a long decode reads), int8 (stored blocks only); for this process and its "
        f"workers (${KV_DTYPE_ENV})",
    )
    return parser


def _apply_precision(args: argparse.Namespace) -> None:
    """--precision and --kv-dtype for every model this process (and any worker it starts) loads; a bad
    $WORKBENCH_PRECISION or $WORKBENCH_KV_DTYPE is an error here, before anything starts."""
    if getattr(args, "precision", None):
        os.environ[PRECISION_ENV] = args.precision
    if getattr(args, "kv_dtype", None):
        os.environ[KV_DTYPE_ENV] = args.kv_dtype
    env_choice(PRECISION_ENV, PRECISIONS, PRECISIONS[0])
    env_choice(KV_DTYPE_ENV, KV_DTYPE_CHOICES, KV_DTYPE_CHOICES[0])


def _engine_exit_code(exc: Exception) -> int | None:
    """Engine errors are not WorkbenchErrors (engine/ imports nothing of ours): map them here."""
    try:
        from engine import errors
    except ImportError:
        return None
    if isinstance(exc, errors.ModelNotFoundError):
        return 3
    if isinstance(exc, errors.EngineError):
        return 1
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        _apply_precision(args)
        if args.func is not None:
            return int(args.func(args))
        if headless.wants_headless(args):
            return int(headless.run(args))
        from workbench.tui.app import is_terminal

        if is_terminal():
            from workbench import tui

            return tui.run(args)
        from workbench.cmd_doctor import welcome

        return welcome()
    except WorkbenchError as exc:
        print(f"workbench: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("workbench: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        code = _engine_exit_code(exc)
        if code is None:
            raise
        print(f"workbench: {exc}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
