"""Session storage: a durable JSONL log per session (the source of truth) mirrored into Redis.

Redis keys (see docs/architecture.md; none has a TTL except leases), all with the hash tag `{s}` so a
Redis Cluster keeps them in one slot (core.keys) and each write below stays one MULTI:
  wb:{s}:<id>          hash   the SessionInfo fields, JSON-encoded, plus log_size (bytes of the disk log
                              the Redis side reflects)
  wb:{s}:<id>:log      list   the log records, one JSON line each, exactly as on disk
  wb:{s}:index         zset   id -> updated time (listing, newest first)
  wb:{s}:repo:<path>   zset   id -> updated time, per repository
  wb:{s}:ids           zset   every id at score 0 (unique-prefix lookups by lex range)
  wb:{s}:fts:*                the full-text index (search.py)
On start, a session whose Redis side is missing or lags its disk log (FLUSHALL, a new Redis, a
crash) is rebuilt from disk.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from core import keys
from core.errors import NotFound
from core.paths import data_dir, ensure_writable
from sessions import ids, search
from sessions.log import (
    SessionFile,
    header_record,
    history_delta,
    message_record,
    meta_record,
    parse_lines,
    partial_record,
    replay,
)
from sessions.model import Message, Session, SessionInfo

log = logging.getLogger("workbench.sessions")

P = keys.SESSIONS
INDEX_KEY = P + "index"
IDS_KEY = P + "ids"  # every id at score 0: prefix lookups by ZRANGE BYLEX
_REBUILD_BATCH = 200
# KEYS[1]: the ids zset (it names the slot; the script builds the session keys of that slot from ARGV[1],
# the prefix). ARGV[2]: "id size id size ..." of the logs on disk; returns the ids whose Redis side is stale.
_STALE = """
local out, p = {}, ARGV[1]
for sid, size in string.gmatch(ARGV[2], '(%S+) (%S+)') do
  local have = redis.call('HGET', p .. sid, 'log_size')
  if not have or redis.call('HEXISTS', p .. sid, 'id') == 0
      or not redis.call('ZSCORE', KEYS[1], sid) then
    out[#out + 1] = sid
  elseif have ~= size and redis.call('EXISTS', p .. sid .. ':lease') == 0 then
    out[#out + 1] = sid
  end
end
return out
"""


def session_key(session_id: str) -> str:
    return P + session_id


def log_key(session_id: str) -> str:
    return f"{P}{session_id}:log"


def repo_key(repo: str) -> str:
    return f"{P}repo:{repo}"


@dataclass
class SearchHit:
    session: SessionInfo
    score: float
    matched: list[str]
    message_number: int | None  # 1-based number of the best matching message; None: the title
    snippet: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session.id,
            "title": self.session.title,
            "repo": self.session.repo,
            "updated": self.session.updated,
            "score": round(self.score, 4),
            "matched": self.matched,
            "message": self.message_number,
            "snippet": self.snippet,
        }


def _hash_fields(info: SessionInfo, log_size: int | None = None) -> dict[str, str]:
    data = info.info_dict()
    if log_size is not None:
        data["log_size"] = log_size
    return {k: json.dumps(v, ensure_ascii=False) for k, v in data.items()}


def _info_from_hash(raw: dict[bytes, bytes]) -> SessionInfo:
    data = {k.decode(): json.loads(v) for k, v in raw.items()}
    data.pop("log_size", None)
    return SessionInfo.from_info_dict(data)


class SessionStore:
    def __init__(self, r: redis.Redis, root: Path | None = None, sync: bool = True) -> None:
        self.r = r
        self.root = ensure_writable(root or data_dir() / "sessions")
        self._lock = threading.RLock()  # one writer at a time per process: log order = Redis order
        if sync:
            self.sync_from_disk()

    def file(self, session_id: str) -> SessionFile:
        return SessionFile(self.root / f"{session_id}.jsonl")

    # -- writing -------------------------------------------------------------------------------

    def _multi(self) -> redis.client.Pipeline:
        """A MULTI/EXEC pipeline: named, because redis-py's cluster pipeline is not a transaction
        unless asked (all its keys share the `{s}` slot, so it may be one)."""
        return self.r.pipeline(transaction=True)

    def create(self, session: Session, records: list[dict[str, Any]] | None = None) -> None:
        """Write a new session (header plus any `records`, e.g. a fork's copied messages)."""
        with self._lock:
            lines = [header_record(session), *(records or [])]
            size = self.file(session.id).write_new(lines)
            pipe = self._multi()
            self._put_redis(pipe, session, [json.dumps(x, ensure_ascii=False) for x in lines], size)
            pipe.execute()

    def append_message(
        self,
        session: Session,
        message: Message,
        history: list[int] | None = None,
        fingerprint: str = "",
        dtype: str = "",
    ) -> int:
        """Record a complete (or interrupted) message durably; returns its index.

        `history`: the token ids the session's KV blocks are now saved under (assistant replies).
        """
        with self._lock:
            index = len(session.messages)
            delta = None
            if history is not None:
                delta = history_delta(session.history, history, fingerprint, dtype)
            record = message_record(index, message, delta)
            size = self.file(session.id).append([record], sync=True)
            session.messages.append(message)
            session.message_count = len(session.messages)
            session.updated = max(session.updated, message.created)
            if history is not None:
                session.history = list(history)
                session.history_fingerprint, session.history_dtype = fingerprint, dtype
            pipe = self._multi()
            pipe.rpush(log_key(session.id), json.dumps(record, ensure_ascii=False))
            fields = {"updated": session.updated, "message_count": session.message_count, "log_size": size}
            pipe.hset(session_key(session.id), mapping={k: json.dumps(v) for k, v in fields.items()})
            self._touch(pipe, session)
            search.add_text(pipe, session.id, message.content)
            pipe.execute()
            return index

    def seal_open_reply(self, session: Session) -> None:
        """Record a reply that replay rebuilt from partial records (its writer died) as a message of
        its own: the log then says it was interrupted, and search finds its words."""
        index = session.open_reply
        if index is None:
            return
        with self._lock:
            message = session.messages[index]
            record = message_record(index, message)
            size = self.file(session.id).append([record], sync=True)
            pipe = self._multi()
            pipe.rpush(log_key(session.id), json.dumps(record, ensure_ascii=False))
            pipe.hset(session_key(session.id), mapping={"log_size": json.dumps(size)})
            search.add_text(pipe, session.id, message.content)
            pipe.execute()
            session.open_reply = None

    def append_partial(self, session: Session, index: int, content: str, reasoning: str, now: float) -> None:
        """Record text generated so far for reply `index` (no fsync: it only has to survive kill -9).

        log_size is left behind on purpose: should the reply never complete, the next start sees
        the lag and rebuilds the session from disk, indexing the interrupted reply for search.
        """
        with self._lock:
            record = partial_record(index, content, reasoning)
            record["created"] = now
            self.file(session.id).append([record], sync=False)
            session.updated = now
            pipe = self._multi()
            pipe.rpush(log_key(session.id), json.dumps(record, ensure_ascii=False))
            fields = {"updated": now, "message_count": index + 1}
            pipe.hset(session_key(session.id), mapping={k: json.dumps(v) for k, v in fields.items()})
            self._touch(pipe, session)
            pipe.execute()

    def update_meta(self, session: Session, **changes: Any) -> None:
        """Rename, change settings or model: one meta record, applied to `session` too."""
        with self._lock:
            record = meta_record(changes)
            size = self.file(session.id).append([record], sync=True)
            old_title = session.title
            for key, value in changes.items():
                if key == "history_reset":
                    session.history, session.history_fingerprint, session.history_dtype = [], "", ""
                else:
                    setattr(session, key, value)
            # Only the changed fields: another process may have renamed the session meanwhile.
            fields = {k: v for k, v in _hash_fields(session, size).items() if k in changes or k == "log_size"}
            pipe = self._multi()
            pipe.rpush(log_key(session.id), json.dumps(record, ensure_ascii=False))
            pipe.hset(session_key(session.id), mapping=fields)
            if session.title != old_title:
                search.remove_text(pipe, session.id, old_title, search.TITLE_WEIGHT)
                search.add_text(pipe, session.id, session.title, search.TITLE_WEIGHT)
            pipe.execute()

    def delete(self, session_id: str) -> None:
        with self._lock:
            info = self.info(session_id)
            pipe = self._multi()
            search.remove_session(pipe, session_id)
            pipe.delete(session_key(session_id))
            pipe.delete(log_key(session_id))  # one key per DEL: a cluster pipeline refuses more
            pipe.zrem(INDEX_KEY, session_id)
            pipe.zrem(IDS_KEY, session_id)
            pipe.zrem(repo_key(info.repo), session_id)
            pipe.execute()
            self.file(session_id).path.unlink(missing_ok=True)

    def _touch(self, pipe: redis.client.Pipeline, session: SessionInfo) -> None:
        pipe.zadd(INDEX_KEY, {session.id: session.updated})
        pipe.zadd(repo_key(session.repo), {session.id: session.updated})

    def _put_redis(self, pipe: redis.client.Pipeline, session: Session, lines: list[str], size: int) -> None:
        """The whole Redis side of one session (creation and rebuild share this)."""
        pipe.delete(session_key(session.id))
        pipe.delete(log_key(session.id))
        pipe.hset(session_key(session.id), mapping=_hash_fields(session, size))
        if lines:
            pipe.rpush(log_key(session.id), *lines)
        self._touch(pipe, session)
        pipe.zadd(IDS_KEY, {session.id: 0})
        tf, length = search.session_counts(session.title, [m.content for m in session.messages])
        search.add_counts(pipe, session.id, tf, length)

    # -- reading -------------------------------------------------------------------------------

    def exists(self, session_id: str) -> bool:
        return bool(self.r.exists(session_key(session_id))) or self.file(session_id).path.exists()

    def info(self, session_id: str) -> SessionInfo:
        raw = self.r.hgetall(session_key(session_id))
        if b"id" in raw:
            return _info_from_hash(raw)
        return self.load(session_id)

    def load(self, session_id: str, stop_after: int | None = None) -> Session:
        """The session with its messages: from the disk log, the source of truth, when this machine has
        it (it is ahead of Redis whenever a writer died between its disk append and its Redis push),
        else from the Redis log (a session written on another machine that shares this Redis)."""
        path = self.file(session_id).path
        if path.exists():
            session = self.file(session_id).load(stop_after)
            if session is None:
                raise NotFound(f"session {session_id}: its log has no readable session header ({path})")
            return session
        lines = self.r.lrange(log_key(session_id), 0, -1)
        where = f"redis {log_key(session_id)}"
        session = replay(parse_lines(lines, where), where, stop_after) if lines else None
        if session is None:
            raise NotFound(f"no session {session_id} (see `workbench sessions list`)")
        return session

    def list(self, repo: str | None = None, limit: int | None = None, offset: int = 0) -> list[SessionInfo]:
        """Sessions newest first, optionally only those of one repository."""
        key = repo_key(repo) if repo else INDEX_KEY
        end = -1 if limit is None else offset + limit - 1
        return self._infos([m.decode() for m in self.r.zrevrange(key, offset, end)])

    def latest(self, repo: str) -> SessionInfo | None:
        found = self.list(repo=repo, limit=1)
        return found[0] if found else None

    def all_ids(self) -> list[str]:
        return [m.decode() for m in self.r.zrange(INDEX_KEY, 0, -1)]

    def resolve(self, prefix: str) -> str:
        """Full id for an id or unique prefix (NotFound / AmbiguousId listing candidates)."""
        text = ids.normalize_prefix(prefix)
        if ids.is_valid(text) and self.exists(text):
            return text

        def describe(session_id: str) -> str:
            raw = self.r.hget(session_key(session_id), "title")
            return json.loads(raw) if raw else ""

        candidates = self.r.zrange(IDS_KEY, f"[{text}", f"[{text}\xff", bylex=True)
        return ids.resolve_prefix(prefix, [c.decode() for c in candidates], describe)

    def _infos(self, session_ids: list[str]) -> list[SessionInfo]:
        pipe = self.r.pipeline(transaction=False)
        for session_id in session_ids:
            pipe.hgetall(session_key(session_id))
        # A hash without its id is the remains of a write that raced a FLUSHALL: the next start rebuilds it.
        return [_info_from_hash(raw) for raw in pipe.execute() if b"id" in raw]

    def search(self, query: str, repo: str | None = None, limit: int = 20) -> list[SearchHit]:
        """Sessions ranked by BM25, each with the best matching message and a snippet of it."""
        scored = search.search(self.r, query, limit, repo_key(repo) if repo else None)
        ids_ = [s.session_id for s in scored]
        infos = {i.id: i for i in self._infos(ids_)}
        pipe = self.r.pipeline(transaction=False)
        for session_id in ids_:
            pipe.lrange(log_key(session_id), 0, -1)
        logs = dict(zip(ids_, pipe.execute(), strict=True))
        hits = []
        for s in scored:
            info = infos.get(s.session_id)
            if info is None:
                continue
            where = f"redis {log_key(s.session_id)}"
            session = replay(parse_lines(logs[s.session_id], where), where)
            number, snippet = _best_message(session.messages if session else [], s.matched, info.title)
            hits.append(SearchHit(info, s.score, s.matched, number, snippet))
        return hits

    # -- rebuild -------------------------------------------------------------------------------

    def sync_from_disk(self) -> list[str]:
        """Rebuild the Redis side of every session whose disk log it does not reflect; returns their ids.

        Every process pays the check on start, so it is one Lua call comparing each log's size with the
        log_size Redis has for it. A session another process holds is written to as we look (its reply
        in progress lags log_size on purpose): that process keeps its Redis side, so it is rebuilt only
        if it is missing altogether.
        """
        sizes = {}
        with os.scandir(self.root) as entries:
            for entry in entries:
                stem, ext = os.path.splitext(entry.name)
                if ext == ".jsonl" and ids.is_valid(stem):
                    try:
                        sizes[stem] = entry.stat().st_size
                    except FileNotFoundError:
                        continue  # deleted meanwhile by another process
        packed = " ".join(f"{sid} {size}" for sid, size in sorted(sizes.items()))
        stale = sorted(m.decode() for m in self.r.eval(_STALE, 1, IDS_KEY, P, packed)) if packed else []
        for start in range(0, len(stale), _REBUILD_BATCH):
            self._rebuild(stale[start : start + _REBUILD_BATCH])
        if stale:
            log.info("rebuilt the Redis side of %d session(s) from %s", len(stale), self.root)
        return stale

    def _rebuild(self, session_ids: list[str]) -> None:
        # One transaction per batch: two processes rebuilding at once serialize, and the second's
        # remove-then-add leaves the index exactly as the first made it (never counted twice).
        pipe = self.r.pipeline(transaction=True)
        for session_id in session_ids:
            search.remove_session(pipe, session_id)
            file = self.file(session_id)
            try:
                data = file.path.read_bytes()
            except FileNotFoundError:
                continue
            raw_lines = data.splitlines()
            records = list(parse_lines(raw_lines, str(file.path)))
            session = replay(iter(records), str(file.path))
            if session is None:
                log.warning("%s: no readable session header; left out of the index", file.path)
                continue
            lines = [raw_lines[lineno - 1].decode() for lineno, _ in records]  # valid lines, as written
            self._put_redis(pipe, session, lines, len(data))
        pipe.execute()


def _best_message(messages: list[Message], matched: list[str], title: str) -> tuple[int | None, str]:
    """(1-based number, snippet) of the message holding most of the matched terms; the title if none."""
    best, best_count = None, 0
    for number, message in enumerate(messages, start=1):
        text = message.content.lower()  # substring test: close enough to pick a snippet, and fast
        count = sum(1 for t in matched if t in text)
        if count > best_count:
            best, best_count = number, count
    if best is None:
        return None, title
    return best, search.snippet(messages[best - 1].content, matched)
