"""run_command: a shell command in the repository root, in its own process group, with a minimal
environment, a timeout, an output cap, and a kill of the whole group (children included) at the end."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from typing import IO, Any

from agent.tools.base import (
    Kind,
    Prepared,
    Tool,
    ToolContext,
    ToolError,
    ToolOutput,
    arg_int,
    arg_str,
    check_unknown,
    object_schema,
)

# Only what a build or test command needs: no tokens, no REDIS_URL, no credentials from the user's shell.
_PASSED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "TMPDIR", "SHELL")
_GRACE_S = 1.0  # between SIGTERM and SIGKILL


def minimal_env() -> dict[str, str]:
    env = {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}
    env.setdefault("PATH", os.defpath)
    env.update(LANG="C.UTF-8", LC_ALL="C.UTF-8", TERM="dumb", NO_COLOR="1", PAGER="cat", GIT_PAGER="cat")
    return env


class _Capture:
    """Reads a pipe on a thread, keeping the first `cap` bytes and counting the rest."""

    def __init__(self, pipe: IO[bytes], cap: int) -> None:
        self.pipe, self.cap = pipe, cap
        self.kept = bytearray()
        self.dropped = 0
        self.thread = threading.Thread(target=self._read, name="run_command-output", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        read = getattr(self.pipe, "read1", self.pipe.read)  # read1: what is there, not waiting for more
        while chunk := read(65536):
            room = self.cap - len(self.kept)
            self.kept += chunk[: max(room, 0)]
            self.dropped += max(len(chunk) - max(room, 0), 0)

    def text(self) -> str:
        return self.kept.decode("utf-8", errors="replace")


def kill_group(pgid: int, sig: int) -> bool:
    """Signal every process of the group; False when none is left."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def run_shell(command: str, ctx: ToolContext, timeout_s: float) -> dict[str, Any]:
    """Run `command` with /bin/sh in the repo root; returns exit code, output and how it ended."""
    started = time.monotonic()
    proc = subprocess.Popen(
        ["/bin/sh", "-c", command], cwd=ctx.confine.root, env=minimal_env(), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    capture = _Capture(proc.stdout, ctx.limits.command_output_bytes)
    ended = "exited"
    while proc.poll() is None:
        if ctx.cancel.is_set():
            ended = "cancelled"
        elif time.monotonic() - started > timeout_s:
            ended = "timeout"
        if ended != "exited":
            kill_group(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(_GRACE_S)
            break
        time.sleep(0.02)
    # Children left behind (backgrounded, or ignoring SIGTERM) die with the group, so none outlives the call
    # and the pipe they hold closes.
    kill_group(proc.pid, signal.SIGKILL)
    code = proc.wait()
    capture.thread.join(2.0)
    proc.stdout.close()
    return {"exit_code": code, "ended": ended, "output": capture.text(), "dropped_bytes": capture.dropped,
            "seconds": round(time.monotonic() - started, 3)}  # fmt: skip


class RunCommand(Tool):
    name = "run_command"
    kind = Kind.COMMAND
    description = "Run a shell command in the repo root, no stdin; returns exit code and output."
    parameters = object_schema(["command"], command={"type": "string"}, timeout_s={"type": "integer"})

    def prepare(self, arguments: Mapping[str, Any], ctx: ToolContext) -> Prepared:
        check_unknown(arguments, self.parameters["properties"])
        command = arg_str(arguments, "command")
        if not command.strip():
            raise ToolError("argument 'command' is empty")
        default = int(ctx.limits.command_timeout_s)
        timeout = min(arg_int(arguments, "timeout_s", default, minimum=1) or default, default * 10)
        preview = f"$ {command}\n(in {ctx.confine.root}, timeout {timeout} s)"
        return Prepared(Kind.COMMAND, f"run_command: {command[:120]}", preview,
                        lambda: self._run(ctx, command, timeout))  # fmt: skip

    def _run(self, ctx: ToolContext, command: str, timeout: float) -> ToolOutput:
        res = run_shell(command, ctx, timeout)
        text = res["output"]
        if res["dropped_bytes"]:
            text += f"\n... ({res['dropped_bytes']} more bytes of output not shown)"
        if res["ended"] == "timeout":
            status = f"killed after the {timeout} s timeout"
        elif res["ended"] == "cancelled":
            status = "killed: the loop was stopped"
        else:
            status = f"exit code {res['exit_code']}"
        ok = res["ended"] == "exited" and res["exit_code"] == 0
        return ToolOutput(f"{text.rstrip()}\n[{status}]".lstrip(), status, ok=ok, data=res)
