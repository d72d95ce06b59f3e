"""`Index`: one repo + one embedding model, kept in Redis; incremental updates, hybrid search.

ix = Index.open(repo_path)          # embedding model: all-MiniLM-L6-v2 by default
ix.update()                         # full pass: a file whose content is unchanged costs one hash
ix.update(["src/a.py"])             # just these paths (the watcher's call)
hits = ix.search("query", k=8, path_glob="src/**", lang="python")
ids = ix.token_ids(hits[0], tokenizer)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.lease import pid_alive
from indexer import tokens
from indexer.chunk import Chunk, chunk_file
from indexer.embed import Encoder, default_model_dir, model_identity
from indexer.guard import check_root
from indexer.progress import Meter, ProgressCallback
from indexer.scan import IgnoreRules, SourceFile, read_source, scan
from indexer.store import LEASE_WAIT_SECONDS, FilePlan, IndexStore, element_name, embed_hash, index_id
from indexer.updating import Pass, UpdateCancelled, UpdateStats, write_groups

log = logging.getLogger(__name__)

QUIET_REASONS = ("vanished", "ignored")  # normal during edits: not logged as errors

_encoders: dict[tuple[str, str | None], Encoder] = {}
_encoders_lock = threading.Lock()


def shared_encoder(model_dir: Path | None = None, backend: str | None = None) -> Encoder:
    """One encoder per model dir and backend per process (loading costs ~0.5 s and 90 MB)."""
    path = Path(model_dir) if model_dir is not None else default_model_dir()
    key = (str(path.resolve()), backend)
    with _encoders_lock:
        if key not in _encoders:
            _encoders[key] = Encoder(path, backend=backend)
        return _encoders[key]


@dataclass(frozen=True)
class Hit:
    path: str
    start_line: int
    end_line: int
    symbol: str
    language: str
    score: float
    text: str
    content_hash: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Index:
    def __init__(self, root: Path, redis: Any, model_dir: Path | None, encoder: Encoder | None) -> None:
        self.root = root
        self.redis = redis
        self.model_dir = model_dir
        self._encoder = encoder
        self.model_id = encoder.model_id if encoder is not None else model_identity(model_dir)
        self.id = index_id(str(root), self.model_id)
        self.store = IndexStore(redis, self.id)
        self.rules = IgnoreRules(root)
        self.tokenizers: dict[str, tokens.TokenizerLike] = {}
        self._lock = threading.Lock()  # one update at a time (the watcher and a caller may overlap)
        self._token = f"{os.getpid()}:{uuid.uuid4().hex}"

    @classmethod
    def open(
        cls,
        repo_path: str | os.PathLike[str],
        redis: Any = None,
        *,
        model_dir: str | os.PathLike[str] | None = None,
        encoder: Encoder | None = None,
    ) -> Index:
        """The index of `repo_path` (resolved to its real path) for the embedding model; no I/O on files."""
        root = Path(os.path.realpath(repo_path))
        if not root.is_dir():
            from core.errors import NotFound

            raise NotFound(f"repository {repo_path} is not a directory")
        if redis is None:
            from core.redis_server import connect

            redis = connect()
        return cls(root, redis, Path(model_dir) if model_dir is not None else None, encoder)

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = shared_encoder(self.model_dir)
        return self._encoder

    # ---- updating ----------------------------------------------------------------------------------
    def update(
        self,
        paths: Iterable[str] | None = None,
        *,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        confirm: bool = False,
    ) -> UpdateStats:
        """Bring the index in line with the files: all of them (None) or just `paths` (repo-relative or
        absolute; a path that no longer exists, or is now ignored, leaves the index).

        `progress` gets `indexer.progress.Progress` reports (waiting, reading, embedding, done);
        `cancel` ends the pass between files with UpdateCancelled (what was written stays); a first
        full pass of a home directory or `/` raises guard.BroadRoot unless `confirm`."""
        meter = Meter(progress)
        # One writer per index: this process's threads (lock) and other processes (the Redis lease,
        # kept by a heartbeat) — two writers could both VADD one new element.
        with self._lock:
            if paths is None:
                self.check_root(confirm)
            lease = self.store.writer_lease(self._token, label=f"indexing {self.root}")
            if not lease.acquire(LEASE_WAIT_SECONDS, lambda h, _: meter.waiting(h.describe()), cancel):
                raise UpdateCancelled(f"index of {self.root}: cancelled while waiting for its writer lease")
            lease.start_heartbeat()
            try:
                return self._update(paths, Pass(meter, lease, cancel))
            except BaseException:
                with contextlib.suppress(Exception):
                    self.store.set_status(state="interrupted")
                raise
            finally:
                lease.release()

    def check_root(self, confirm: bool = False) -> None:
        """Raise guard.BroadRoot (what would be indexed, how to confirm) before a first full pass of a
        home directory or `/`, unless `confirm`; an index that exists was confirmed already."""
        if not confirm and self.store.counts()[0] == 0:
            check_root(self.root)

    def _update(self, paths: Iterable[str] | None, run: Pass) -> UpdateStats:
        t0 = time.monotonic()
        stats = UpdateStats()
        self.store.set_status(state="indexing")
        self.store.set_meta(str(self.root), self.model_id)
        if paths is None:
            self.rules = IgnoreRules(self.root)  # ignore files may have changed
            result = scan(self.root, self.rules)
            for rel, reason in result.skipped:
                self.store.log_error(rel, reason)
            stats.files_skipped += len(result.skipped)
            manifests = self.store.manifests()
            # Indexed files the scan no longer yields (deleted, now ignored, now too big) leave.
            ignored = set(manifests) - set(result.files)
            targets = result.files + sorted(ignored)
        else:
            targets = list(dict.fromkeys(self.relpath(p) for p in paths))
            targets = [t for t in targets if t]
            manifests = self.store.manifests(targets)
            ignored = {t for t in targets if self.rules.is_ignored(t, False)}
        plans = self._plan(targets, manifests, ignored, stats, run)
        self._write(plans, stats, run)
        files, chunks = self.store.counts()
        stats.seconds = time.monotonic() - t0
        errors = self.redis.llen(self.store.errors_key)
        self.store.set_status(
            state="idle", files=files, chunks=chunks, pending=0, last_update=time.time(), errors=errors
        )
        run.meter.done(len(plans), stats.chunks_added)
        return stats

    def relpath(self, path: str) -> str:
        """`path` (absolute or repo-relative) as a repo-relative posix path; "" when outside the repo."""
        p = Path(path)
        if p.is_absolute():
            try:
                p = p.relative_to(self.root)
            except ValueError:
                return ""
        rel = p.as_posix().strip("/")
        return "" if rel in (".", "") else rel

    def _plan(
        self,
        targets: list[str],
        manifests: dict[str, dict[str, Any]],
        ignored: set[str],
        stats: UpdateStats,
        run: Pass,
    ) -> list[FilePlan]:
        plans: list[FilePlan] = []
        for n, rel in enumerate(targets):
            run.check()
            run.meter.reading(n, len(targets))
            stats.files_seen += 1
            src: SourceFile | str = "ignored" if rel in ignored else read_source(self.root, rel)
            old = manifests.get(rel)
            if isinstance(src, str):
                if not src.startswith(QUIET_REASONS):
                    stats.files_skipped += 1
                    self.store.log_error(rel, src)
                    log.info("index: skipped %s: %s", rel, src)
                if old is not None:
                    stats.files_removed += 1
                    plans.append(FilePlan(rel, None, remove=list(old["elements"])))
                continue
            if old is not None and old["sha"] == src.sha256:
                stats.files_unchanged += 1
                continue
            stats.files_changed += 1
            names: set[str] = set()
            new = [(element_name(c, names), c) for c in chunk_file(rel, src.text, src.language)]
            old_elements = set(old["elements"]) if old else set()
            new_elements = {e for e, _ in new}
            plans.append(FilePlan(
                rel, src.sha256, src.language,
                remove=[e for e in (old["elements"] if old else []) if e not in new_elements],
                add=[(e, c) for e, c in new if e not in old_elements],
                reattribute=[(e, c) for e, c in new if e in old_elements],  # pruned in _write when unchanged
                elements=[e for e, _ in new],
            ))  # fmt: skip
        return plans

    def _write(self, plans: list[FilePlan], stats: UpdateStats, run: Pass) -> None:
        if not plans:
            return
        old_elements = [e for p in plans for e in p.remove] + [e for p in plans for e, _ in p.reattribute]
        old_records = {
            e: r for e, r in zip(old_elements, self.store.chunk_records(old_elements), strict=True) if r
        }
        for plan in plans:
            plan.reattribute = [(e, c) for e, c in plan.reattribute if _moved(old_records.get(e), c)]
        reusable = self._reusable_vectors(plans, old_records)
        files_done, chunks_done, chunks_total = 0, 0, sum(len(p.add) for p in plans)
        for group in write_groups(plans):
            self.store.set_status(pending=len(plans) - files_done)
            run.meter.embedding(files_done, len(plans), chunks_done, chunks_total)
            run.check()
            vectors = self._vectors_for(group, reusable, stats)
            run.check()  # a lease lost while embedding: another writer may be at work, write nothing
            for plan in group:
                self.store.apply(plan, old_records, vectors)
                stats.chunks_added += len(plan.add)
                stats.chunks_removed += len(plan.remove)
                stats.chunks_reattributed += len(plan.reattribute)
            for tokenizer in self.tokenizers.values():
                tokens.make_missing(
                    self.redis, tokenizer, [(c.content_hash, c.text) for p in group for _, c in p.add]
                )
            files_done += len(group)
            chunks_done += sum(len(p.add) for p in group)
        run.meter.embedding(files_done, len(plans), chunks_done, chunks_total)

    def _reusable_vectors(
        self, plans: list[FilePlan], old_records: dict[str, dict[str, Any]]
    ) -> dict[str, np.ndarray]:
        """embed-hash -> stored vector of an element about to be removed whose text comes back elsewhere
        (a rename, a move, an edit elsewhere in a file): read before any VREM, so it is never re-embedded."""
        wanted = {embed_hash(c) for p in plans for _, c in p.add}
        source: dict[str, str] = {}
        for p in plans:
            for e in p.remove:
                eh = old_records.get(e, {}).get("eh")
                if eh in wanted and eh not in source:
                    source[eh] = e
        if not source:
            return {}
        found = self.store.vectors(list(source.values()))
        return {eh: v for eh, v in zip(source, found, strict=True) if v is not None}

    def _vectors_for(
        self, group: list[FilePlan], reusable: dict[str, np.ndarray], stats: UpdateStats
    ) -> dict[str, np.ndarray]:
        vectors: dict[str, np.ndarray] = {}
        todo: list[tuple[str, Chunk]] = []
        for plan in group:
            for element, chunk in plan.add:
                vec = reusable.get(embed_hash(chunk))
                if vec is not None:
                    vectors[element] = vec
                    stats.vectors_reused += 1
                else:
                    todo.append((element, chunk))
        if todo:
            embedded = self.encoder.encode([c.embed_text for _, c in todo])
            stats.chunks_embedded += len(todo)
            for (element, _), vec in zip(todo, embedded, strict=True):
                vectors[element] = vec
        return vectors

    # ---- reading -----------------------------------------------------------------------------------
    def search(self, query: str, k: int = 8, path_glob: str | None = None, lang: str | None = None,
               mode: str = "hybrid") -> list[Hit]:  # fmt: skip
        """Best chunks for `query`: VSIM (with FILTER) fused with BM25 by reciprocal rank; mode
        "vector" or "lexical" uses one signal alone."""
        from indexer.search import search

        return search(self, query, k=k, path_glob=path_glob, lang=lang, mode=mode)

    def token_ids(self, hit: Hit, tokenizer: tokens.TokenizerLike) -> list[int]:
        """The hit's text as token ids of `tokenizer`, from its pre-tokenized blob (made once)."""
        return tokens.token_ids(self.redis, tokenizer, hit.content_hash, hit.text)

    def use_tokenizer(self, tokenizer: tokens.TokenizerLike) -> int:
        """Pre-tokenize every indexed chunk for `tokenizer` now and every new chunk from now on; returns
        how many blobs were made (chunks already tokenized by this tokenizer identity cost nothing)."""
        self.tokenizers[tokenizer.identity] = tokenizer
        made = 0
        for _, batch in self.iter_chunk_records():
            made += tokens.make_missing(self.redis, tokenizer, [(r["hash"], r["text"]) for r in batch])
        return made

    def iter_chunk_records(self, batch: int = 500) -> Iterable[tuple[list[str], list[dict[str, Any]]]]:
        elements: list[str] = []
        records: list[dict[str, Any]] = []
        for element, raw in self.redis.hscan_iter(self.store.chunks_key, count=batch):
            elements.append(element.decode())
            records.append(json.loads(raw))
            if len(elements) >= batch:
                yield elements, records
                elements, records = [], []
        if elements:
            yield elements, records

    def status(self) -> dict[str, str]:
        """The status hash, with `state` corrected when the process that set it is gone: a writer
        killed mid-pass leaves "indexing" (reported "interrupted"), a killed watcher "watching"
        (reported "stopped")."""
        status = self.store.status()
        state = status.get("state")
        if state in ("indexing", "watching") and self._writer_gone(status):
            status["state"] = "interrupted" if state == "indexing" else "stopped"
            status["note"] = f"pid {status.get('pid', '?')} stopped while {state}"
        return status

    def _writer_gone(self, status: dict[str, str]) -> bool:
        if status.get("host") == socket.gethostname():
            return not pid_alive(int(status.get("pid") or 0))
        if status.get("state") == "indexing":  # elsewhere: only its lease can tell
            return self.store.writer_lease(self._token).holder() is None
        return False

    def drop(self) -> int:
        return self.store.drop()


def _moved(old: dict[str, Any] | None, chunk: Chunk) -> bool:
    if old is None:
        return False
    return (old["start"], old["end"], old["symbol"]) != (chunk.start_line, chunk.end_line, chunk.symbol)
