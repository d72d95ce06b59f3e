"""Blocks that caches of this process hold as pages: a restore of the same key shares them instead of
reading them again (another session, a fork, the TUI switching back)."""

from __future__ import annotations

import threading
import weakref
from typing import Any

from kvstore.format import DecodedBlock


class LiveBlock:
    """A verified block that pages of this process's caches view (a cache's page keeps it alive).
    `mapping` and `intact` are what the engine checks on a page over a mapped file (tiers/mapped.py)."""

    def __init__(self, block: DecodedBlock, source: Any, nbytes: int) -> None:
        self.k, self.v, self.n_tokens, self.logits = block.k, block.v, block.n_tokens, block.logits
        self.source, self.nbytes = source, nbytes
        self.mapping = getattr(source, "mapping", None)

    def intact(self) -> bool:
        check = getattr(self.source, "intact", None)
        return check() if check is not None else True


class LiveBlocks:
    """Key -> LiveBlock while some cache holds it (weak: a block no cache holds is let go). Thread-safe:
    the store's reader threads add to it."""

    def __init__(self) -> None:
        self._blocks: weakref.WeakValueDictionary[str, LiveBlock] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def add(self, key: str, block: LiveBlock) -> LiveBlock:
        with self._lock:
            self._blocks[key] = block
        return block

    def get(self, key: str) -> LiveBlock | None:
        """The block under `key` if a cache still holds it and its file (if mapped) did not change."""
        with self._lock:
            block = self._blocks.get(key)
        return block if block is not None and block.intact() else None
