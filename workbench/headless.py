"""Headless mode: `workbench -p PROMPT` and `workbench run SCRIPT` (the contract in README "Headless use").

Everything the user typed is checked before the session service is asked to do anything, so bad input
(an empty prompt, an unreadable file, an unknown session or model) exits with one line on stderr and
leaves the session store untouched. Turns run through `sessions.SessionService` only.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from core.errors import UsageError, WorkbenchError
from workbench.argtypes import number_in, whole_number
from workbench.output import FORMATS, Writer, make_writer

if TYPE_CHECKING:
    from sessions.turn import Turn

INTERRUPTED = 130


# -- arguments ---------------------------------------------------------------------------------------


_positive_int = whole_number(1)
_seed = whole_number(0)
_temperature = number_in(0.0, 100.0, note=" (0 is greedy)")
_top_p = number_in(0.0, 1.0, low_open=True)


def add_turn_options(parser: argparse.ArgumentParser, suppress: bool = False) -> None:
    """The options of a headless turn. `suppress`: for a subcommand (`run`), leave options that were not
    given out of the namespace, so that the same option given before the subcommand is kept."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    session = parser.add_argument_group("session")
    which = session.add_mutually_exclusive_group()
    which.add_argument(
        "--resume",
        metavar="ID",
        default=default(None),
        help="resume the session with this id (a unique prefix will do)",
    )
    which.add_argument(
        "-c",
        "--continue",
        dest="continue_session",
        action="store_true",
        default=default(False),
        help="continue the latest session in this repo",
    )
    session.add_argument(
        "--repo",
        metavar="PATH",
        default=default(None),
        help="the repository the session is about (default: the current directory)",
    )
    session.add_argument(
        "--output-format",
        choices=FORMATS,
        default=default(None),
        help="text (the reply), json (one object), stream-json (one event per line)",
    )

    model = parser.add_argument_group("model and sampling (sticky: a resumed session keeps them)")
    model.add_argument(
        "--model",
        metavar="NAME",
        default=default(None),
        help="Hugging Face id in the local cache, or a model directory",
    )
    model.add_argument(
        "--backend",
        choices=("numpy", "mlx"),
        default=default(None),
        help="default: mlx on Apple Silicon or with a GPU, else numpy",
    )
    model.add_argument("--system", metavar="TEXT", default=default(None), help="the system prompt")
    model.add_argument(
        "--max-tokens", type=_positive_int, metavar="N", default=default(None), help="most tokens to generate"
    )
    model.add_argument(
        "--temperature", type=_temperature, metavar="T", default=default(None), help="0 is greedy"
    )
    model.add_argument(
        "--top-p", type=_top_p, metavar="P", default=default(None), help="nucleus sampling, (0, 1]"
    )
    model.add_argument(
        "--seed", type=_seed, metavar="N", default=default(None), help="sampling seed (repeatable)"
    )
    model.add_argument(
        "--rag",
        action=argparse.BooleanOptionalAction,
        default=default(None),
        help="splice code retrieved from the repo's index into the prompt (--no-rag: don't)",
    )
    model.add_argument(
        "--thinking",
        action=argparse.BooleanOptionalAction,
        default=default(None),
        help="let the model reason first (Qwen3); reasoning goes to stderr in text mode",
    )
    model.add_argument(
        "--no-cache",
        action="store_true",
        default=default(False),
        help="recompute the whole prompt, no KV blocks read or written (the reference for A/B checks)",
    )
    agent = parser.add_argument_group("agent tools (per turn, not sticky)")
    agent.add_argument(
        "--allow-tools",
        choices=("none", "read", "edit", "all"),
        default=default(None),
        help="offer the model tools; what runs without asking (read: search/read/list/grep; edit: + file "
        "edits; all: + commands, secrets files); anything else is refused; none: no tools (default: read)",
    )
    agent.add_argument(
        "--max-turns", type=_positive_int, metavar="N", default=default(None),
        help="most generations in one turn's tool loop (default 8)",
    )  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Top-level options of `workbench` (called by workbench.cli.build_parser)."""
    prompt = parser.add_argument_group("headless")
    source = prompt.add_mutually_exclusive_group()
    source.add_argument(
        "-p",
        "--print",
        dest="prompt",
        metavar="PROMPT",
        help="answer PROMPT and exit (`-p -` reads it from stdin)",
    )
    source.add_argument("--prompt-file", metavar="FILE", help="answer the prompt in FILE and exit")
    prompt.add_argument("--remote", action="store_true", help="run the turn on a `workbench serve` worker")
    add_turn_options(parser)


def option(args: argparse.Namespace, name: str, fallback: Any = None) -> Any:
    return getattr(args, name, fallback)


def wants_headless(args: argparse.Namespace) -> bool:
    """A prompt or an output format was given: answer and exit (no terminal UI)."""
    return any(option(args, n) is not None for n in ("prompt", "prompt_file", "output_format"))


# -- validated input ---------------------------------------------------------------------------------


@dataclass
class TurnRequest:
    """Everything a headless invocation asks for, checked; nothing has touched the store yet."""

    repo: str
    output_format: str
    resume: str | None
    continue_session: bool
    model: str | None
    backend: str | None
    no_cache: bool
    allow_tools: str = "read"
    max_turns: int = 8
    settings: dict[str, Any] = field(default_factory=dict)  # only what the user gave (sticky changes)
    sampling: dict[str, Any] = field(default_factory=dict)


def read_prompt(args: argparse.Namespace) -> str:
    """The prompt from -p, -p - (stdin) or --prompt-file; UsageError naming what is wrong."""
    text, where = option(args, "prompt"), "-p"
    path = option(args, "prompt_file")
    if text is None and path is None:
        raise UsageError("no prompt: give -p PROMPT, -p - (stdin) or --prompt-file FILE")
    if text == "-":
        text, where = _read_stdin(), "stdin"
    elif path is not None:
        text, where = read_text_file(path, "prompt file"), f"prompt file {path}"
    if not text.strip():
        raise UsageError(f"empty prompt (from {where})")
    return text


def _read_stdin() -> str:
    try:
        return sys.stdin.buffer.read().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"the prompt on stdin is not UTF-8 text (byte {exc.start})") from None


def read_text_file(path: str, what: str) -> str:
    if path == "-":
        return _read_stdin()
    try:
        return Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what} {path} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def resolve_repo(path: str | None) -> str:
    repo = Path(path or ".").expanduser()
    if not repo.is_dir():
        raise UsageError(f"--repo {path}: not a directory")
    return str(repo.resolve())


def turn_request(args: argparse.Namespace) -> TurnRequest:
    resume, cont = option(args, "resume"), bool(option(args, "continue_session", False))
    if resume is not None and cont:
        raise UsageError("--resume and --continue exclude each other: give one")
    if resume is not None and not resume.strip():
        raise UsageError("--resume needs a session id (or a unique prefix of one)")
    model = option(args, "model")
    if model is not None and not model.strip():
        raise UsageError("--model needs a model name or directory")
    settings: dict[str, Any] = {}
    if option(args, "system") is not None:
        settings["system_prompt"] = args.system
    if option(args, "rag") is not None:
        settings["rag"] = args.rag
    if option(args, "thinking") is not None:
        settings["thinking"] = args.thinking
    sampling = {
        name: option(args, name)
        for name in ("max_tokens", "temperature", "top_p", "seed")
        if option(args, name) is not None
    }
    return TurnRequest(
        repo=resolve_repo(option(args, "repo")),
        output_format=option(args, "output_format") or "text",
        resume=resume,
        continue_session=cont,
        model=model,
        backend=option(args, "backend"),
        no_cache=bool(option(args, "no_cache", False)),
        allow_tools=option(args, "allow_tools") or "read",
        max_turns=option(args, "max_turns") or 8,
        settings=settings,
        sampling=sampling,
    )


# -- running turns -----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """`workbench -p PROMPT ...`: one turn."""
    prompt = read_prompt(args)
    request = turn_request(args)
    if option(args, "remote", False):
        from workbench.cmd_serve import run_remote

        return run_remote(request, prompt)
    return run_turns(request, [prompt])


def run_turns(request: TurnRequest, prompts: list[str]) -> int:
    """Run `prompts` as successive turns of one session; stops at the first turn that fails."""
    from workbench import session_client

    _log_to_stderr()
    writer = make_writer(request.output_format)
    svc = session_client.open_service()
    try:
        session_id = session_client.pick_session(svc, request)
        for number, prompt in enumerate(prompts):
            if number and request.output_format == "text":
                sys.stdout.write("\n")  # replies of a script are separated by a blank line
            turn = session_client.start_turn(svc, session_id, prompt, request)
            code = drive(turn, writer)
            session_id = turn.session_id
            if code != 0:
                return code
    finally:
        svc.close()
    return 0


class _LogLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"workbench: {record.levelname.lower()}: {record.getMessage()}"


def _log_to_stderr() -> None:
    """Warnings of the service (retrieval skipped, blocks not saved) as `workbench: warning: ...` lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogLine())
    logging.basicConfig(level=logging.WARNING, handlers=[handler])


class _CtrlC:
    """SIGINT while a turn runs: the first cancels the turn (its partial reply is recorded as interrupted,
    and the Result still arrives); a second one stops waiting at once. Ctrl-C is the CLI's business:
    the session service only offers `turn.cancel()`."""

    def __init__(self, turn: Turn) -> None:
        self.turn = turn
        self.count = 0

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.count > 1:
            raise KeyboardInterrupt
        self.turn.cancel()


def exit_code(result: dict[str, Any], interrupted: bool = False) -> int:
    """The exit code of a turn (README, Exit codes): 130 when cancelled, the failure's code, else 0."""
    if interrupted or result.get("finish_reason") == "cancelled":
        return INTERRUPTED
    if result.get("is_error"):
        return int(result.get("exit_code") or 1)
    return 0


def drive(turn: Turn, writer: Writer) -> int:
    """Write the events of `turn` as they come; returns the exit code of the turn. A turn whose new
    session was never created (a bad model) has `session_id: null` in its result: the service reports
    an id only once the session exists."""
    handler = _CtrlC(turn)
    previous = signal.signal(signal.SIGINT, handler)
    try:
        result = _write_turn(turn, writer)
    except BrokenPipeError:  # the reader went away (`| head`): stop generating, keep what was said
        turn.cancel()
        turn.wait()
        _discard_stdout()
        raise WorkbenchError(f"output closed; the turn of session {turn.session_id} was cancelled") from None
    finally:
        signal.signal(signal.SIGINT, previous)
    return exit_code(result, interrupted=handler.count > 0)


def _write_turn(turn: Turn, writer: Writer) -> dict[str, Any]:
    result: dict[str, Any] | None = None
    for event in turn:
        data = event.to_dict()
        if data.get("type") == "result":
            result = data
            break
        writer.event(data)
    if result is None:  # the service ended a turn without a Result: report it as an error
        result = {"session_id": turn.session_id, "is_error": True, "finish_reason": "error",
                  "error": "the turn ended without a result", "exit_code": 1}  # fmt: skip
    writer.result(result)
    return result


def _discard_stdout() -> None:
    """Point stdout at /dev/null so that flushing it at exit does not raise again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
