"""How a headless turn is written: `text`, `json` or `stream-json` (the contract in README "Headless use").

A writer receives each event's `to_dict()` and the final result; it never sees the engine or Redis.
- text:        the answer on stdout as it streams; reasoning and diagnostics on stderr.
- json:        one object per turn, on one line, when the turn ends (`run` prints one line per turn).
- stream-json: every event as one line, flushed as it happens; the `result` line ends each turn.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Protocol, TextIO

FORMATS = ("text", "json", "stream-json")

# The fields of the `json` object and of the final `result` event that tools may rely on.
RESULT_FIELDS = ("session_id", "text", "model", "backend", "finish_reason", "tokens", "timings", "retrieved")
TOKEN_FIELDS = ("prompt", "cached", "prefilled", "generated")
TIMING_FIELDS = ("ttft_s", "prefill_tok_s", "decode_tok_s", "restore_s")
RETRIEVED_FIELDS = ("path", "start_line", "end_line", "symbol", "score")


class Writer(Protocol):
    def event(self, data: dict[str, Any]) -> None: ...

    def result(self, data: dict[str, Any]) -> None: ...


def complete_result(data: dict[str, Any]) -> dict[str, Any]:
    """The result with every contract field present (a turn that failed early may lack some)."""
    out = dict(data)
    out.setdefault("type", "result")
    out.setdefault("text", "")
    out.setdefault("model", "")
    out.setdefault("backend", "")
    out.setdefault("finish_reason", "error" if out.get("is_error") else "")
    tokens = dict(out.get("tokens") or {})
    out["tokens"] = {**{k: 0 for k in TOKEN_FIELDS}, **tokens}
    timings = dict(out.get("timings") or {})
    out["timings"] = {**{k: None for k in TIMING_FIELDS}, **timings}
    out["retrieved"] = [
        {**{k: None for k in RETRIEVED_FIELDS}, **hit} for hit in (out.get("retrieved") or [])
    ]
    out.setdefault("is_error", False)
    out.setdefault("error", None)
    return out


def _line(stream: TextIO, data: dict[str, Any]) -> None:
    stream.write(json.dumps(data, ensure_ascii=False) + "\n")
    stream.flush()


class TextWriter:
    """The reply on stdout; reasoning (with --thinking) and a closing summary line on stderr."""

    def __init__(self, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> None:
        self.out, self.err = out, err
        self._answer_ends_line = True  # nothing written yet: no newline owed
        self._reasoning_ends_line = True
        self._index_line: Any = None  # workbench.index_progress.TerminalProgress, made on first use

    def event(self, data: dict[str, Any]) -> None:
        if data.get("type") == "index_progress":  # a RAG turn refreshing the index: one line on stderr
            self._index_progress(data)
            return
        if data.get("type") == "tool_result":  # one line per call on stderr: what ran, how it went
            self._tool_line(data)
            return
        if data.get("type") != "delta" or not data.get("text"):
            return
        text = data["text"]
        if data.get("kind") == "reasoning":
            self.err.write(text)
            self.err.flush()
            self._reasoning_ends_line = text.endswith("\n")
            return
        if not self._reasoning_ends_line:  # reasoning left the terminal mid-line: start the answer clean
            self.err.write("\n")
            self.err.flush()
            self._reasoning_ends_line = True
        self.out.write(text)
        self.out.flush()
        self._answer_ends_line = text.endswith("\n")

    def _index_progress(self, data: dict[str, Any]) -> None:
        from types import SimpleNamespace

        from workbench.index_progress import TerminalProgress

        if self._index_line is None:
            self._index_line = TerminalProgress("refreshing the index", self.err)
        fields = {k: v for k, v in data.items() if k not in ("type", "session_id")}
        self._index_line(SimpleNamespace(**fields))

    def _tool_line(self, data: dict[str, Any]) -> None:
        if not self._answer_ends_line:
            self.out.write("\n")
            self.out.flush()
            self._answer_ends_line = True
        approval = data.get("approval") or {}
        how = "" if approval.get("by") in (None, "auto") else f" ({approval.get('by')})"
        outcome = data.get("summary") if data.get("ok") else (data.get("error") or data.get("summary"))
        self.err.write(f"[tool {data.get('tool') or '?'}{how}: {outcome}]\n")
        self.err.flush()

    def result(self, data: dict[str, Any]) -> None:
        if not self._answer_ends_line:
            self.out.write("\n")
            self.out.flush()
        if not self._reasoning_ends_line:
            self.err.write("\n")
        self._answer_ends_line = self._reasoning_ends_line = True
        if data.get("is_error"):  # one line: what failed, and in which session if there is one
            where = f" (session {data['session_id']})" if data.get("session_id") else ""
            self.err.write(f"workbench: {data.get('error') or 'the turn failed'}{where}\n")
        else:
            self.err.write(summary_line(data) + "\n")
        self.err.flush()


def summary_line(data: dict[str, Any]) -> str:
    """`[session ID · model (backend) · finish · prompt P tok, C cached · G tok at R tok/s]` for stderr."""
    tokens = data.get("tokens") or {}
    timings = data.get("timings") or {}
    parts = [f"session {data.get('session_id')}"]
    if data.get("model"):
        parts.append(f"{data['model']} ({data.get('backend') or '?'})")
    if data.get("finish_reason"):
        parts.append(str(data["finish_reason"]))
    if tokens:
        parts.append(f"prompt {tokens.get('prompt', 0)} tok, {tokens.get('cached', 0)} cached")
        rate = timings.get("decode_tok_s")
        parts.append(f"{tokens.get('generated', 0)} tok" + (f" at {rate:.1f} tok/s" if rate else ""))
    return "[" + " · ".join(parts) + "]"


class JsonWriter:
    """One JSON object per turn, written when the turn ends."""

    def __init__(self, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> None:
        self.out, self.err = out, err

    def event(self, data: dict[str, Any]) -> None:
        return None

    def result(self, data: dict[str, Any]) -> None:
        full = complete_result(data)
        _line(self.out, full)
        if full["is_error"]:
            self.err.write(f"workbench: {full['error']}\n")
            self.err.flush()


class StreamJsonWriter(JsonWriter):
    """Every event on its own line as it happens, flushed; the result line (JsonWriter's) ends the turn."""

    def event(self, data: dict[str, Any]) -> None:
        _line(self.out, data)


def make_writer(fmt: str, out: TextIO | None = None, err: TextIO | None = None) -> Writer:
    out, err = out or sys.stdout, err or sys.stderr
    if fmt == "json":
        return JsonWriter(out, err)
    if fmt == "stream-json":
        return StreamJsonWriter(out, err)
    return TextWriter(out, err)
