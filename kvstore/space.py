"""The value a block store is keyed by: which weights made the KV, and the shape and dtype of the cache.

Blocks of two caches are interchangeable exactly when their `BlockSpace`s are equal, so the store needs
this value, never a loaded model: a fork can pin its blocks from what its session recorded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import xxhash

if TYPE_CHECKING:
    from engine.model import Model


@dataclass(frozen=True)
class BlockSpace:
    identity: str  # hex: the model fingerprint plus a digest of the weights' bytes (`weights_identity`)
    dtype: str  # the cache's KV dtype; blocks are stored in the store's dtype when it has one, else this
    layers: int
    kv_heads: int
    head_dim: int

    def __post_init__(self) -> None:
        if not self.identity:
            raise ValueError("BlockSpace needs a model identity (got an empty string)")
        for name in ("layers", "kv_heads", "head_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"BlockSpace.{name} must be >= 1, got {getattr(self, name)}")


def space_of(model: Model) -> BlockSpace:
    """The block space of a loaded engine model (hashes its weight files once per process)."""
    c = model.config
    return BlockSpace(
        weights_identity(model.fingerprint, model.path),
        model.kv_dtype,
        c.num_hidden_layers,
        c.num_key_value_heads,
        c.head_dim,
    )


_identities: dict[tuple, str] = {}
_READ_CHUNK = 16 << 20


def weights_identity(fingerprint: str, path: str | Path | None) -> str:
    """What blocks are keyed and checked by: the model fingerprint plus a digest of the weights' bytes.

    The fingerprint covers safetensors headers and sizes, which two checkpoints of the same shapes share;
    a content digest (xxh3-128, ~8 GB/s, once per process per checkpoint version) tells them apart.
    """
    files = sorted(Path(path).glob("*.safetensors")) if path else []
    stats = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    key = (fingerprint, stats)
    if key not in _identities:
        h = hashlib.sha256(fingerprint.encode())
        buf = bytearray(_READ_CHUNK)
        for f in files:
            x = xxhash.xxh3_128()
            with open(f, "rb", buffering=0) as fh:
                while n := fh.readinto(buf):
                    x.update(memoryview(buf)[:n])
            h.update(f.name.encode() + x.digest())
        _identities[key] = h.hexdigest()
    return _identities[key]
