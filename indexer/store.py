"""The Redis layout of one index (`wb:ix:{<index-id>}:*`) and the writes that keep it consistent.

The braces are a hash tag: in a Redis Cluster all of an index's keys share one slot (core.keys), so the
MULTI of one file's update may touch them all.

| key | type | holds |
| --- | --- | --- |
| `vset` | vector set | an element per chunk, Q8, attributes JSON (path lang start end symbol hash dirs) |
| `files` | hash | path -> manifest JSON {sha, lang, elements} |
| `chunks` | hash | element -> chunk JSON {path, lang, start, end, symbol, hash, eh, text, terms, len} |
| `lx:t:<term>`, `lx:len`, `lx:stats` | hashes | BM25 postings (indexer.lexical) |
| `meta` | hash | repo, model |
| `status` | hash | files, chunks, pending, last_update, errors, state, pid, host (of who set state) |
| `errors` | list | the latest skip/error reasons, newest first |
| `lock` | string with TTL | the writer's lease (core.lease: pid, host, token), held during an update |

An element's name is `<path>#<12 hex of the embedded text's sha256>`, so a chunk that did not change keeps
its element and its vector. Elements are never VADDed twice: Redis 8.0.2 applies a VADD on an existing
element in memory but does not write it to the AOF, so a changed chunk is a VREM + VADD of a new name,
and a chunk that only moved lines gets VSETATTR (which is persisted).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from redis.commands.vectorset.commands import QuantizationOptions

from core import keys
from core.lease import Lease
from indexer.chunk import Chunk
from indexer.lexical import LexicalIndex

ERRORS_KEPT = 200
SYMBOL_BOOST = 3
LEASE_MS = 15_000  # renewed by a heartbeat: a writer killed on another host blocks others 15 s at most
LEASE_WAIT_SECONDS = 600  # how long a pass waits for a live writer elsewhere before giving up


def index_id(repo_realpath: str, model_id: str) -> str:
    return hashlib.sha256(f"{repo_realpath}\0{model_id}".encode()).hexdigest()[:16]


def element_name(chunk: Chunk, taken: set[str]) -> str:
    base = f"{chunk.path}#{hashlib.sha256(chunk.embed_text.encode()).hexdigest()[:12]}"
    name, n = base, 1
    while name in taken:  # the same text twice in one file
        n += 1
        name = f"{base}~{n}"
    taken.add(name)
    return name


def embed_hash(chunk: Chunk) -> str:
    return hashlib.sha256(chunk.embed_text.encode()).hexdigest()[:24]


def attributes(chunk: Chunk) -> dict[str, Any]:
    parts = chunk.path.split("/")[:-1]
    dirs = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return {"path": chunk.path, "lang": chunk.language, "start": chunk.start_line, "end": chunk.end_line,
            "symbol": chunk.symbol, "hash": chunk.content_hash, "dirs": dirs}  # fmt: skip


@dataclass
class FilePlan:
    """What one file's update writes: elements to drop, to add (with vectors), to re-attribute."""

    path: str
    sha: str | None  # None: the file is gone from the index
    language: str = ""
    remove: list[str] = field(default_factory=list)
    add: list[tuple[str, Chunk]] = field(default_factory=list)
    reattribute: list[tuple[str, Chunk]] = field(default_factory=list)
    elements: list[str] = field(default_factory=list)  # the file's elements afterwards, in order


class IndexStore:
    def __init__(self, redis: Any, ix_id: str) -> None:
        self.r = redis
        self.id = ix_id
        self.prefix = keys.index_prefix(ix_id)
        self.vset = self.prefix + "vset"
        self.files_key = self.prefix + "files"
        self.chunks_key = self.prefix + "chunks"
        self.meta_key = self.prefix + "meta"
        self.status_key = self.prefix + "status"
        self.errors_key = self.prefix + "errors"
        self.lexical = LexicalIndex(self.prefix)

    # ---- reads -------------------------------------------------------------------------------------
    def manifests(self, paths: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """path -> manifest for `paths` (all files when None); paths not indexed are absent."""
        if paths is None:
            raw = self.r.hgetall(self.files_key)
            return {k.decode(): json.loads(v) for k, v in raw.items()}
        if not paths:
            return {}
        values = self.r.hmget(self.files_key, paths)
        return {p: json.loads(v) for p, v in zip(paths, values, strict=True) if v is not None}

    def chunk_records(self, elements: list[str]) -> list[dict[str, Any] | None]:
        if not elements:
            return []
        return [json.loads(v) if v is not None else None for v in self.r.hmget(self.chunks_key, elements)]

    def vectors(self, elements: list[str]) -> list[np.ndarray | None]:
        """Stored (dequantized) vectors, for reusing an embedding whose element is being renamed."""
        pipe = self.r.pipeline(transaction=False)
        for e in elements:
            pipe.execute_command("VEMB", self.vset, e)
        out: list[np.ndarray | None] = []
        for reply in pipe.execute(raise_on_error=False):
            ok = isinstance(reply, list) and reply
            out.append(np.asarray([float(x) for x in reply], dtype=np.float32) if ok else None)
        return out

    def counts(self) -> tuple[int, int]:
        pipe = self.r.pipeline(transaction=False)
        pipe.hlen(self.files_key)
        pipe.hlen(self.chunks_key)
        files, chunks = pipe.execute()
        return int(files), int(chunks)

    # ---- writes ------------------------------------------------------------------------------------
    def apply(
        self, plan: FilePlan, old_records: dict[str, dict[str, Any]], vectors: dict[str, np.ndarray]
    ) -> None:
        """Write one file's plan in one MULTI/EXEC, so a reader never sees half a file."""
        pipe = self.r.pipeline(transaction=True)
        for element in plan.remove:
            pipe.execute_command("VREM", self.vset, element)
            rec = old_records.get(element)
            if rec is not None:
                self.lexical.remove(pipe, element, rec.get("terms", []), int(rec.get("len", 0)))
            pipe.hdel(self.chunks_key, element)
        for element, chunk in plan.add:
            vec = vectors[element]
            pipe.vset().vadd(self.vset, vec.astype("<f4").tobytes(), element,
                             quantization=QuantizationOptions.Q8, attributes=attributes(chunk))  # fmt: skip
            terms, length = self.lexical.add(pipe, element, lexical_text(chunk))
            pipe.hset(self.chunks_key, element, _record(chunk, terms, length))
        for element, chunk in plan.reattribute:
            pipe.execute_command("VSETATTR", self.vset, element, json.dumps(attributes(chunk)))
            rec = dict(old_records[element])
            rec.update(start=chunk.start_line, end=chunk.end_line, symbol=chunk.symbol)
            pipe.hset(self.chunks_key, element, json.dumps(rec))
        if plan.sha is None:
            pipe.hdel(self.files_key, plan.path)
        else:
            manifest = {"sha": plan.sha, "lang": plan.language, "elements": plan.elements}
            pipe.hset(self.files_key, plan.path, json.dumps(manifest))
        pipe.execute()

    def writer_lease(self, token: str, label: str = "") -> Lease:
        """The one-writer-per-index lease; `token` is the Index's own, so it takes back a lease of
        its own that a Redis restart left behind."""
        return Lease(self.r, self.prefix + "lock", LEASE_MS, token=token, label=label)

    def set_meta(self, repo: str, model_id: str) -> None:
        self.r.hset(self.meta_key, mapping={"repo": repo, "model": model_id})

    def set_status(self, **fields: Any) -> None:
        """Update status fields; a new `state` also records this process (pid, host), so a reader can
        tell a state whose process is gone."""
        if "state" in fields:
            fields.update(pid=os.getpid(), host=socket.gethostname())
        self.r.hset(self.status_key, mapping={k: str(v) for k, v in fields.items()})

    def status(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.r.hgetall(self.status_key).items()}

    def log_error(self, path: str, reason: str) -> None:
        pipe = self.r.pipeline(transaction=False)
        pipe.lpush(self.errors_key, f"{path}: {reason}")
        pipe.ltrim(self.errors_key, 0, ERRORS_KEPT - 1)
        pipe.execute()

    def drop(self) -> int:
        """Delete every key of this index; returns how many were deleted."""
        keys = list(self.r.scan_iter(match=self.prefix + "*", count=1000))
        for i in range(0, len(keys), 500):
            self.r.delete(*keys[i : i + 500])
        return len(keys)


def lexical_text(chunk: Chunk) -> str:
    """What BM25 sees: the path, the symbol weighted up (a function's name says what it is about more
    than any word of its body), then the code."""
    return f"{chunk.path} {' '.join([chunk.symbol] * SYMBOL_BOOST)}\n{chunk.text}"


def _record(chunk: Chunk, terms: list[str], length: int) -> str:
    return json.dumps({
        "path": chunk.path, "lang": chunk.language, "start": chunk.start_line, "end": chunk.end_line,
        "symbol": chunk.symbol, "hash": chunk.content_hash, "eh": embed_hash(chunk), "text": chunk.text,
        "terms": terms, "len": length,
    })  # fmt: skip
