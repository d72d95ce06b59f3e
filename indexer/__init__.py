"""Live code index: scan, chunk, pre-tokenize, embed into a Redis Vector Set, hybrid search, watch."""

from __future__ import annotations

from indexer.index import Hit, Index, UpdateStats

__all__ = ["Hit", "Index", "UpdateStats"]
