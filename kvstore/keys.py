"""Block keys: chain hashes that make equal token prefixes (same block space, same dtype) share blocks.

blake2b over fixed-width fields, never Python's salted hash(), so keys agree across processes and machines.
"""

from __future__ import annotations

import hashlib

import numpy as np

from kvstore.format import DTYPES, FORMAT_VERSION, fingerprint_bytes
from kvstore.space import BlockSpace

_ZERO = bytes(32)


def storage_dtype(space: BlockSpace, dtype: str | None) -> str:
    """The dtype blocks are stored in: `dtype` if given, else the cache's KV dtype (float32 if unknown)."""
    if dtype is not None:
        return dtype
    return space.dtype if space.dtype in DTYPES else "float32"


def _tokens_bytes(token_ids: list[int] | np.ndarray) -> bytes:
    return np.asarray(token_ids, dtype="<u4").tobytes()


def chain_keys(fingerprint: str, dtype: str, token_ids: list[int], block_size: int) -> list[str]:
    """Keys (64 hex) of the complete blocks of `token_ids`: each hashes its parent's key and its tokens."""
    fp = fingerprint_bytes(fingerprint)
    tag = f"{dtype}/v{FORMAT_VERSION}".encode()
    keys: list[str] = []
    prev = _ZERO
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        h = hashlib.blake2b(digest_size=32, person=b"wb-kv-block")
        for part in (fp, tag, prev, _tokens_bytes(token_ids[start : start + block_size])):
            h.update(part)
        prev = h.digest()
        keys.append(prev.hex())
    return keys


def tail_key(fingerprint: str, dtype: str, parent: str | None, tail_ids: list[int]) -> str:
    """Key of the tail record of a history whose complete blocks end in `parent` (None: no blocks)."""
    h = hashlib.blake2b(digest_size=32, person=b"wb-kv-tail")
    parent_bytes = bytes.fromhex(parent) if parent else _ZERO
    for part in (fingerprint_bytes(fingerprint), f"{dtype}/v{FORMAT_VERSION}".encode(), parent_bytes):
        h.update(part)
    h.update(_tokens_bytes(tail_ids))
    return h.hexdigest()
