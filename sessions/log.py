"""The session log: records, their append-only JSONL file, and replaying records into a Session.

One JSON object per line, each with `t`:
  session  the header: {"session": info}                      (first line)
  meta     {"set": {field: value}} — rename, settings or model change
  message  {"n": index, "message": {...}, "history": {"keep": k, "add": [ids], "fingerprint": fp}}
           (history only on assistant messages: the token history — the ids the session's KV
           blocks were saved under — is history[:keep] + add; fp and dtype say which blocks)
  partial  {"n": index, "content": "...", "reasoning": "..."} — text generated since the previous
           partial record of a reply still in progress. A reply that never gets its `message`
           record (kill -9, power loss) replays as an interrupted message made of its partials.
The Redis log mirrors these records one for one, so both sources replay through `replay`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sessions.model import Message, Session, SessionInfo, Settings

log = logging.getLogger("workbench.sessions")
FORMAT_VERSION = 1


def header_record(info: SessionInfo) -> dict[str, Any]:
    return {"t": "session", "v": FORMAT_VERSION, "session": info.info_dict()}


def meta_record(changes: dict[str, Any]) -> dict[str, Any]:
    data = dict(changes)
    if isinstance(data.get("settings"), Settings):
        data["settings"] = data["settings"].to_dict()
    return {"t": "meta", "set": data}


def message_record(index: int, message: Message, history: dict[str, Any] | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {"t": "message", "n": index, "message": message.to_dict()}
    if history is not None:
        record["history"] = history
    return record


def partial_record(index: int, content: str, reasoning: str) -> dict[str, Any]:
    return {"t": "partial", "n": index, "content": content, "reasoning": reasoning}


def history_delta(old: list[int], new: list[int], fingerprint: str, dtype: str) -> dict[str, Any]:
    """How to get `new` from `old`: keep the common prefix, add the rest (compact in the log)."""
    keep = 0
    limit = min(len(old), len(new))
    while keep < limit and old[keep] == new[keep]:
        keep += 1
    return {"keep": keep, "add": new[keep:], "fingerprint": fingerprint, "dtype": dtype}


def encode(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


@dataclass
class _Pending:
    index: int
    content: str = ""
    reasoning: str = ""
    created: float = 0.0


def replay(
    records: Iterable[tuple[int, dict[str, Any]]], where: str, stop_after: int | None = None
) -> Session | None:
    """Build a Session from (line number, record) pairs; None when there is no valid header.

    With `stop_after` N, the session as it was when it had N messages (what a fork copies).
    Records that do not make sense are skipped with a warning naming `where` and the line.
    """
    session: Session | None = None
    pending: _Pending | None = None

    def flush_pending() -> None:
        nonlocal pending
        if pending is not None and session is not None:
            session.messages.append(
                Message(
                    role="assistant",
                    content=pending.content,
                    reasoning=pending.reasoning,
                    status="interrupted",
                    created=pending.created,
                    model=session.model,
                    finish_reason="interrupted",
                )
            )
        pending = None

    for lineno, record in records:
        if session is not None and stop_after is not None and len(session.messages) >= stop_after:
            break
        try:
            kind = record["t"]
            if kind == "session":
                if session is not None:
                    raise ValueError("a second session header")
                info = SessionInfo.from_info_dict(record["session"])
                session = Session(**{k: getattr(info, k) for k in info.__dataclass_fields__})
                continue
            if session is None:
                raise ValueError(f"a {kind!r} record before the session header")
            if kind == "meta":
                _apply_meta(session, record["set"])
            elif kind == "message":
                index = int(record["n"])
                message = Message.from_dict(record["message"])
                if pending is not None and pending.index < index:
                    flush_pending()
                if pending is not None and pending.index == index:
                    pending = None  # the reply completed: its message replaces the partials
                session.messages.append(message)
                session.updated = max(session.updated, message.created)
                hist = record.get("history")
                if hist is not None:
                    session.history = session.history[: int(hist["keep"])] + [int(t) for t in hist["add"]]
                    session.history_fingerprint = str(hist.get("fingerprint", ""))
                    session.history_dtype = str(hist.get("dtype", ""))
            elif kind == "partial":
                index = int(record["n"])
                if pending is None or pending.index != index:
                    flush_pending()
                    pending = _Pending(index, created=float(record.get("created", session.updated)))
                pending.content += str(record.get("content", ""))
                pending.reasoning += str(record.get("reasoning", ""))
            else:
                raise ValueError(f"unknown record type {kind!r}")
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("%s line %d: skipped a bad record (%s)", where, lineno, exc)
    if session is not None and pending is not None:
        session.open_reply = len(session.messages)  # its writer died: replayed, not yet sealed
    flush_pending()
    if session is not None:
        if stop_after is not None:
            del session.messages[stop_after:]
        session.message_count = len(session.messages)
    return session


def _apply_meta(session: Session, changes: dict[str, Any]) -> None:
    for key, value in changes.items():
        if key == "settings":
            session.settings = Settings.from_dict(value)
        elif key in ("title", "model", "fingerprint", "backend", "updated"):
            setattr(session, key, value)
        elif key == "history_reset":
            # The session moved to another model: its token history no longer matches any block.
            session.history, session.history_fingerprint, session.history_dtype = [], "", ""
        else:
            raise ValueError(f"unknown meta field {key!r}")


def parse_lines(lines: Iterable[bytes], where: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Decode JSONL lines; a corrupt line (torn write, bad bytes) is skipped with a warning."""
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as exc:
            log.warning("%s line %d: skipped a corrupt line (%s)", where, lineno, exc)
            continue
        yield lineno, record


class SessionFile:
    """The durable copy of one session: append-only, fsync'd after each complete message."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, records: list[dict[str, Any]], sync: bool) -> int:
        """Append records in one write; returns the file size after it."""
        data = b"".join(encode(r) for r in records)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size and not self._ends_with_newline(fd):
                data = b"\n" + data  # a torn last line from a crash: never glue a record onto it
            os.write(fd, data)
            if sync:
                os.fsync(fd)
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    @staticmethod
    def _ends_with_newline(fd: int) -> bool:
        size = os.fstat(fd).st_size
        return os.pread(fd, 1, size - 1) == b"\n"

    def write_new(self, records: list[dict[str, Any]]) -> int:
        """Create the file with its first records, atomically (temp + fsync + rename)."""
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "wb") as fh:
            fh.write(b"".join(encode(r) for r in records))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        return self.path.stat().st_size

    def lines(self) -> list[bytes]:
        return self.path.read_bytes().splitlines()

    def load(self, stop_after: int | None = None) -> Session | None:
        return replay(parse_lines(self.lines(), str(self.path)), str(self.path), stop_after)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
