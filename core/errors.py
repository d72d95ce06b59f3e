"""Errors a user can act on. The CLI prints `workbench: <message>` and exits with `exit_code`."""

from __future__ import annotations


class WorkbenchError(Exception):
    """An expected failure: shown as one line, never as a traceback."""

    exit_code = 1


class UsageError(WorkbenchError):
    exit_code = 2


class NotFound(WorkbenchError):
    """A model, session or file that the user named does not exist."""

    exit_code = 3


class RedisUnavailable(WorkbenchError):
    exit_code = 1


class DataDirError(WorkbenchError):
    exit_code = 1
