"""Block keys: chain hashes that make equal token prefixes (same model, same dtype) share blocks.

blake2b over fixed-width fields, never Python's salted hash(), so keys agree across processes and machines.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from engine.blockformat import DTYPES, FORMAT_VERSION, fingerprint_bytes

_ZERO = bytes(32)


def storage_dtype(model: Any, dtype: str | None) -> str:
    """The dtype blocks are stored in: `dtype` if given, else the engine's KV dtype (float32 if unknown)."""
    if dtype is not None:
        return dtype
    return model.kv_dtype if model.kv_dtype in DTYPES else "float32"


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


_identities: dict[tuple, str] = {}
_READ_CHUNK = 16 << 20


def model_identity(model: Any) -> str:
    """What blocks are keyed and checked by: the model fingerprint plus a digest of the weights' bytes.

    The fingerprint covers safetensors headers and sizes, which two checkpoints of the same shapes share;
    a content digest (xxh3-128, ~8 GB/s, once per process per checkpoint version) tells them apart.
    """
    files = sorted(Path(model.path).glob("*.safetensors")) if getattr(model, "path", None) else []
    stats = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    key = (model.fingerprint, stats)
    if key not in _identities:
        h = hashlib.sha256(model.fingerprint.encode())
        buf = bytearray(_READ_CHUNK)
        for f in files:
            x = xxhash.xxh3_128()
            with open(f, "rb", buffering=0) as fh:
                while n := fh.readinto(buf):
                    x.update(memoryview(buf)[:n])
            h.update(f.name.encode() + x.digest())
        _identities[key] = h.hexdigest()
    return _identities[key]
