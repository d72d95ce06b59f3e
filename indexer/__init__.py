"""Live code index: scan, chunk, pre-tokenize, embed into a Redis Vector Set, hybrid search, watch.

`Index`, `Hit` and `UpdateStats` load on first use, so `import indexer.progress` (the progress types a
UI needs) stays free of numpy and redis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from indexer.index import Hit, Index, UpdateStats

__all__ = ["Hit", "Index", "UpdateStats"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from indexer import index

        return getattr(index, name)
    raise AttributeError(f"module 'indexer' has no attribute {name!r}")
