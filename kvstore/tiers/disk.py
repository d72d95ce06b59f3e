"""The disk tier of the KV block store: one file per block, LRU under a size budget.

Implements `kvstore.store.BlockTier`. Keys are the 64-hex chain hashes made by `kvstore.keys`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from kvstore.format import BlockFormatError
from kvstore.tiers.mapped import MappedBlock

log = logging.getLogger(__name__)


class DiskTier:
    """Block files under `root/blocks/<2 hex>/<key>.blk`, indexed in `root/index.sqlite3`.

    Writes are atomic (temp file, fsync, rename, fsync of the directory), so a crash never leaves a half
    block under a block's name. The index (size, last use) is shared by every process using `root`; it is
    reconciled with the files on open and rebuilt from them when missing or unreadable. `budget_bytes` is
    enforced on every put by deleting least recently used blocks.
    """

    name = "disk"
    _TMP_MAX_AGE_S = 600.0

    def __init__(self, root: Path, budget_bytes: int = 16 << 30) -> None:
        self.root = Path(root)
        self.budget_bytes = budget_bytes
        self._blocks_dir = self.root / "blocks"
        self._tmp_dir = self.root / "tmp"
        self._blocks_dir.mkdir(parents=True, exist_ok=True)
        self._tmp_dir.mkdir(parents=True, exist_ok=True)
        self.index_path = self.root / "index.sqlite3"
        self._lock = threading.Lock()
        self._db = self._open_index()
        self._remove_stale_temp_files()
        self.reconcile()

    # -- index ---------------------------------------------------------------------------------
    def _open_index(self) -> sqlite3.Connection:
        for attempt in range(2):
            try:
                db = sqlite3.connect(self.index_path, timeout=30, check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS blocks (key TEXT PRIMARY KEY, size INTEGER, last_used REAL)"
                )
                db.execute("CREATE INDEX IF NOT EXISTS blocks_lru ON blocks(last_used)")
                db.execute("SELECT COUNT(*) FROM blocks").fetchone()
                return db
            except sqlite3.DatabaseError as exc:
                if attempt:
                    raise
                log.warning(
                    "KV disk index %s is unreadable (%s); rebuilding it from the files", self.index_path, exc
                )
                for suffix in ("", "-wal", "-shm"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(f"{self.index_path}{suffix}")
        raise AssertionError("unreachable")

    def _path(self, key: str) -> Path:
        return self._blocks_dir / key[:2] / f"{key}.blk"

    def _files(self) -> Iterator[tuple[str, int, float]]:
        for sub in os.scandir(self._blocks_dir):
            if not sub.is_dir():
                continue
            for entry in os.scandir(sub.path):
                if entry.name.endswith(".blk"):
                    with contextlib.suppress(FileNotFoundError):
                        st = entry.stat()
                        yield entry.name[:-4], st.st_size, st.st_mtime

    def reconcile(self) -> None:
        """Make the index match the files: add files it lacks (by mtime), drop rows whose file is gone."""
        files = {key: (size, mtime) for key, size, mtime in self._files()}
        with self._lock, self._db:
            rows = dict(self._db.execute("SELECT key, size FROM blocks").fetchall())
            gone = [(k,) for k in rows if k not in files]
            new = [(k, s, m) for k, (s, m) in files.items() if rows.get(k) != s]
            self._db.executemany("DELETE FROM blocks WHERE key = ?", gone)
            self._db.executemany("INSERT OR REPLACE INTO blocks VALUES (?, ?, ?)", new)
        if gone or new:
            log.info("KV disk index: %d rows added from files, %d stale rows dropped", len(new), len(gone))
        self._evict_over_budget()

    def _remove_stale_temp_files(self) -> None:
        now = time.time()
        for entry in os.scandir(self._tmp_dir):
            with contextlib.suppress(FileNotFoundError):
                if now - entry.stat().st_mtime > self._TMP_MAX_AGE_S:
                    os.unlink(entry.path)

    # -- BlockTier -------------------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError:
            with self._lock, self._db:
                self._db.execute("DELETE FROM blocks WHERE key = ?", (key,))
            return None
        with self._lock, self._db:
            self._db.execute("UPDATE blocks SET last_used = ? WHERE key = ?", (time.time(), key))
        return data

    def get_mapped(self, key: str) -> MappedBlock | BlockFormatError | None:
        """The block file mapped read-only (not yet verified: MappedBlock.verified), a BlockFormatError
        for a file that cannot be a block (empty), or None when there is none."""
        try:
            block: MappedBlock | BlockFormatError = MappedBlock(self._path(key))
        except FileNotFoundError:
            with self._lock, self._db:
                self._db.execute("DELETE FROM blocks WHERE key = ?", (key,))
            return None
        except BlockFormatError as exc:
            block = exc
        with self._lock, self._db:
            self._db.execute("UPDATE blocks SET last_used = ? WHERE key = ?", (time.time(), key))
        return block

    def put(self, key: str, data: bytes) -> None:
        if len(data) > self.budget_bytes:
            log.warning("KV block %s (%d bytes) exceeds the disk budget %d; not stored", key, len(data),
                        self.budget_bytes)  # fmt: skip
            return
        path = self._path(key)
        path.parent.mkdir(exist_ok=True)
        tmp = self._tmp_dir / f"{key}.{os.getpid()}.{threading.get_ident()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO blocks VALUES (?, ?, ?)", (key, len(data), time.time()))
        self._evict_over_budget()

    def contains(self, keys: list[str]) -> list[bool]:
        found: set[str] = set()
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                marks = ",".join("?" * len(chunk))
                found.update(
                    k for (k,) in self._db.execute(f"SELECT key FROM blocks WHERE key IN ({marks})", chunk)
                )
        return [k in found for k in keys]

    def delete(self, keys: list[str]) -> int:
        removed = 0
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(key))
                removed += 1
        with self._lock, self._db:
            self._db.executemany("DELETE FROM blocks WHERE key = ?", [(k,) for k in keys])
        return removed

    def scan(self) -> list[tuple[str, float]]:
        now = time.time()
        with self._lock:
            return [(k, now - t) for k, t in self._db.execute("SELECT key, last_used FROM blocks")]

    def stats(self) -> dict:
        with self._lock:
            n, total = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blocks").fetchone()
        return {"blocks": n, "bytes": total, "budget_bytes": self.budget_bytes, "path": str(self.root)}

    def clear(self) -> None:
        with self._lock:
            keys = [k for (k,) in self._db.execute("SELECT key FROM blocks")]
        self.delete(keys)
        for key, _, _ in list(self._files()):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(key))

    def drop_page_cache(self) -> None:
        """Ask the kernel to forget cached pages of every block file, so the next read hits the device."""
        for key, _, _ in self._files():
            with contextlib.suppress(OSError):
                fd = os.open(self._path(key), os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)

    def _evict_over_budget(self) -> None:
        with self._lock:
            total = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM blocks").fetchone()[0]
            if total <= self.budget_bytes:
                return
            victims = []
            for key, size in self._db.execute("SELECT key, size FROM blocks ORDER BY last_used ASC"):
                if total <= self.budget_bytes:
                    break
                victims.append(key)
                total -= size
        self.delete(victims)
        log.info("KV disk tier over budget: evicted %d least recently used blocks", len(victims))

    def close(self) -> None:
        with self._lock:
            self._db.close()
