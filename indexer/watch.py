"""Watch mode: file events -> debounced, ordered batches of `Index.update(paths)`.

The watchdog thread only records which paths changed (in the order of their latest event); one worker
thread waits until events pause for `debounce` seconds (or `max_delay` passed since the first), then
updates those paths. Reading the files at that moment makes editors' atomic saves (write temp + rename)
come out right: the temp file is gone, the target has the new content. Directory moves and deletes
expand to the files under the old and new names; a branch switch is one big batch, written in groups.

The observer starts before the first full pass (`initial_update`), so an edit made while that pass runs
is queued and applied right after it: no edit is lost between the scan and the watch.

The worker never dies: a Redis outage keeps the batch and retries with backoff, and after reconnecting
it runs a full pass that re-checks every file's hash, so nothing changed during the outage is lost.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from indexer.index import Index
from indexer.progress import ProgressCallback
from indexer.scan import scan
from indexer.updating import UpdateCancelled, UpdateStats

log = logging.getLogger(__name__)

REDIS_ERRORS = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
)


class Watcher:
    def __init__(
        self,
        ix: Index,
        debounce: float = 0.05,
        max_delay: float = 1.0,
        on_update: Callable[[UpdateStats], None] | None = None,
        initial_update: bool = True,
        progress: ProgressCallback | None = None,
        confirm: bool = False,
    ) -> None:
        """`progress` is passed to every update (indexer.progress); `confirm` lets a first full pass
        index a home directory or `/` (guard.BroadRoot otherwise)."""
        self.ix = ix
        self.progress = progress
        self.confirm = confirm
        self.debounce = debounce
        self.max_delay = max_delay
        self.on_update = on_update
        self.initial_update = initial_update
        self.pending: OrderedDict[str, bool] = OrderedDict()  # relpath -> is a directory
        self.full_pass_needed = initial_update
        self.batches = 0
        self.errors = 0
        self._cond = threading.Condition()
        self._first_event = 0.0
        self._last_event = 0.0
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._observer: Any = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> Watcher:
        """Start watching; guard.BroadRoot at once for a home directory or `/` never indexed and not
        confirmed (rather than a worker retrying a pass it may not run)."""
        if self.initial_update:
            self.ix.check_root(self.confirm)
        # The observer first: watchdog adds its watches inside start(), so every event from here on is
        # recorded, including those of files the first full pass has already read.
        self._observer = Observer()
        self._observer.schedule(_Handler(self), str(self.ix.root), recursive=True)
        self._observer.start()
        self._thread = threading.Thread(target=self._run, name="workbench-index-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=30)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until no event is pending and no batch is running (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._cond:
                quiet = not self.pending and not self.full_pass_needed and self._idle.is_set()
            if quiet:
                return True
            time.sleep(0.01)
        return False

    # ---- events (watchdog thread) ------------------------------------------------------------------
    def record(self, abs_path: str, is_dir: bool) -> None:
        rel = self.ix.relpath(abs_path)
        if not rel or rel == ".git" or rel.startswith(".git/"):
            return
        now = time.monotonic()
        with self._cond:
            if not self.pending:
                self._first_event = now
            self.pending.pop(rel, None)
            self.pending[rel] = is_dir or self.pending.get(rel, False)
            self._last_event = now
            self._idle.clear()
            self._cond.notify_all()

    # ---- worker ------------------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            batch, full = self._next_batch()
            if batch is None:
                continue
            try:
                self._publish(pending=len(batch), state="indexing")
                paths = None if full else self._expand(batch)
                stats = self.ix.update(paths, progress=self.progress, cancel=self._stop, confirm=self.confirm)
                self.batches += 1
                backoff = 0.2
                if self.on_update is not None:
                    self.on_update(stats)
            except UpdateCancelled:
                return  # stop() during a pass: what was written stays
            except REDIS_ERRORS as exc:
                log.warning("index watch: Redis unavailable (%s); retrying in %.1f s", exc, backoff)
                self._requeue(batch, full_pass=True)  # on reconnect: re-check every file's hash
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception as exc:  # a bug or an odd file must not end watching
                self.errors += 1
                log.exception("index watch: update failed; will re-check all files")
                self._safe_log_error(f"update failed: {exc!r}")
                self._requeue(batch, full_pass=True)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            self._publish(pending=len(self.pending), state="watching")

    def _next_batch(self) -> tuple[list[tuple[str, bool]] | None, bool]:
        """Wait for a quiet moment after events (or a pending full pass); take everything pending."""
        with self._cond:
            while not self.pending and not self.full_pass_needed:
                self._idle.set()
                if self._stop.is_set():
                    return None, False
                self._cond.wait(0.5)
            while self.pending and not self._stop.is_set():
                now = time.monotonic()
                quiet_for = now - self._last_event
                if quiet_for >= self.debounce or now - self._first_event >= self.max_delay:
                    break
                self._cond.wait(self.debounce - quiet_for)
            batch = list(self.pending.items())
            self.pending.clear()
            full = self.full_pass_needed
            self.full_pass_needed = False
            return batch, full

    def _requeue(self, batch: list[tuple[str, bool]], full_pass: bool) -> None:
        with self._cond:
            for rel, is_dir in batch:
                if rel not in self.pending:
                    self.pending[rel] = is_dir
            self.full_pass_needed = self.full_pass_needed or full_pass

    def _expand(self, batch: list[tuple[str, bool]]) -> list[str]:
        """Directory events -> the files indexed under the directory plus those on disk there now; a
        changed ignore file -> its rules are re-read and its directory re-checked."""
        paths: list[str] = []
        indexed: list[str] | None = None
        for rel, is_dir in batch:
            name = rel.rsplit("/", 1)[-1]
            if name == ".gitignore":
                reldir = rel.rsplit("/", 1)[0] if "/" in rel else ""
                self.ix.rules.forget(reldir)
                rel, is_dir = reldir, True
            path = self.ix.root / rel if rel else self.ix.root
            if not is_dir and not path.is_dir():
                paths.append(rel)
                continue
            if indexed is None:
                indexed = list(self.ix.store.manifests())
            prefix = rel + "/" if rel else ""
            paths += [p for p in indexed if p.startswith(prefix)]
            if path.is_dir() and not (rel and self.ix.rules.is_ignored(rel, True)):
                paths += [f"{prefix}{f}" for f in scan(path, _SubdirRules(self.ix, rel)).files]
        return list(dict.fromkeys(paths))

    def _publish(self, **fields: Any) -> None:
        with contextlib.suppress(REDIS_ERRORS):
            self.ix.store.set_status(**fields)

    def _safe_log_error(self, message: str) -> None:
        with contextlib.suppress(REDIS_ERRORS):
            self.ix.store.log_error("(watch)", message)


class _SubdirRules:
    """The repo's ignore rules seen from a subdirectory that `scan` walks as its root."""

    def __init__(self, ix: Index, reldir: str) -> None:
        self.rules = ix.rules
        self.prefix = reldir + "/" if reldir else ""

    def is_ignored(self, relpath: str, is_dir: bool, parents_checked: bool = False) -> bool:
        return self.rules.is_ignored(self.prefix + relpath, is_dir, parents_checked=parents_checked)


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        if event.is_directory and event.event_type in ("modified", "closed"):
            return  # a file inside changed: that file has its own event
        for attr in ("src_path", "dest_path"):
            raw = getattr(event, attr, "")
            if raw:
                path = raw.decode() if isinstance(raw, bytes) else str(raw)
                self.watcher.record(str(Path(path)), event.is_directory)
