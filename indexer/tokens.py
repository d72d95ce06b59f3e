"""Pre-tokenized chunks: token ids as little-endian uint32 blobs at `wb:tok:<tokenizer-id>:<content-hash>`.

A chunk is tokenized once per tokenizer identity; prompt assembly splices the stored ids instead of
re-tokenizing the text. Blobs are shared by every index (same text, same ids) and never expire.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class TokenizerLike(Protocol):
    """What pre-tokenizing needs: `engine.tokenizer.Tokenizer` fits, so does any small wrapper."""

    identity: str

    def encode(self, text: str) -> list[int]: ...


def blob_key(tokenizer_id: str, content_hash: str) -> str:
    return f"wb:tok:{tokenizer_id}:{content_hash}"


def encode_blob(ids: list[int]) -> bytes:
    return np.asarray(ids, dtype="<u4").tobytes()


def decode_blob(blob: bytes) -> list[int]:
    if len(blob) % 4:
        raise ValueError(f"token blob of {len(blob)} bytes is not a whole number of uint32 ids")
    return np.frombuffer(blob, dtype="<u4").tolist()


def token_ids(redis: Any, tokenizer: TokenizerLike, content_hash: str, text: str) -> list[int]:
    """The chunk's ids from its blob, made and stored first if this tokenizer has not seen the chunk."""
    key = blob_key(tokenizer.identity, content_hash)
    blob = redis.get(key)
    if blob is not None:
        return decode_blob(blob)
    ids = list(tokenizer.encode(text))
    redis.set(key, encode_blob(ids))
    return ids


def make_missing(redis: Any, tokenizer: TokenizerLike, chunks: list[tuple[str, str]]) -> int:
    """Make blobs for the (content_hash, text) pairs that lack one; returns how many were made."""
    if not chunks:
        return 0
    unique = dict(chunks)
    hashes = list(unique)
    pipe = redis.pipeline(transaction=False)
    for h in hashes:
        pipe.exists(blob_key(tokenizer.identity, h))
    missing = [h for h, present in zip(hashes, pipe.execute(), strict=True) if not present]
    pipe = redis.pipeline(transaction=False)
    for h in missing:
        pipe.set(blob_key(tokenizer.identity, h), encode_blob(list(tokenizer.encode(unique[h]))))
    pipe.execute()
    return len(missing)
