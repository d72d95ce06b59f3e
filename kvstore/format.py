"""The binary format of one KV block: a fixed header, then the payload.

Layout (little endian)::

    magic "WBKV" | version u16 | kind u8 | dtype u8 | n_tokens u32 | n_layers u32 | n_kv_heads u32
    | head_dim u32 | group u32 | n_logits u32 | fingerprint 32B | key 32B | payload_len u64
    | checksum 16B (xxh3-128 over the header before it and the payload)
    payload: K then V, each [n_layers, n_kv_heads, n_tokens, head_dim] in `dtype`;
             for int8, each is followed by its fp16 scales [n_layers, n_kv_heads, n_tokens, head_dim/group];
             then n_logits float32 (a tail record: the logits of the history's last position).

The checksum is xxh3-128 rather than blake2b because restore throughput is bounded by it: blake2b runs at
~0.5 GB/s on this machine, xxh3 at ~8 GB/s. It detects corruption; identity comes from the chain-hash key,
which is also stored in the header so a file renamed or copied under the wrong key is caught too.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import xxhash

from kvstore.space import BlockSpace

MAGIC = b"WBKV"
FORMAT_VERSION = 1
KIND_BLOCK = 0
KIND_TAIL = 1

_HEAD = struct.Struct("<4sHBBIIIIII32s32sQ")
_CHECKSUM_LEN = 16
HEADER_LEN = _HEAD.size + _CHECKSUM_LEN

# Storage dtypes: the code written in the header and the numpy dtype of the stored values.
DTYPES: dict[str, tuple[int, np.dtype]] = {
    "float32": (0, np.dtype("<f4")),
    "float16": (1, np.dtype("<f2")),
    "int8": (3, np.dtype("i1")),
}
_DTYPE_BY_CODE = {code: name for name, (code, _) in DTYPES.items()}
INT8_GROUP = 32  # head_dim values sharing one fp16 scale (per layer, head, token)


class BlockFormatError(ValueError):
    """A block whose bytes are corrupted, truncated or made for another model/shape/key."""


@dataclass
class DecodedBlock:
    k: np.ndarray  # [n_layers, n_kv_heads, n_tokens, head_dim], float32 or the stored float dtype
    v: np.ndarray
    n_tokens: int
    logits: np.ndarray | None  # float32 [vocab] for a tail record that carries them


def fingerprint_bytes(fingerprint: str) -> bytes:
    """32 bytes for the header: the sha256 hex fingerprint itself, or a digest of any other string."""
    if len(fingerprint) == 64:
        try:
            return bytes.fromhex(fingerprint)
        except ValueError:
            pass
    return hashlib.sha256(fingerprint.encode()).digest()


def int8_group(head_dim: int) -> int:
    """The scale group along head_dim: INT8_GROUP when it divides head_dim, else the whole head vector."""
    return INT8_GROUP if head_dim % INT8_GROUP == 0 else head_dim


def quantize_int8(x: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric absmax int8 per (layer, head, token, group of head_dim); fp16 scales."""
    shape = x.shape
    g = x.reshape(*shape[:-1], shape[-1] // group, group).astype(np.float32, copy=False)
    scale = np.abs(g).max(axis=-1) / 127.0
    scale = scale.astype(np.float16)
    safe = np.where(scale == 0, np.float16(1), scale).astype(np.float32)
    q = np.rint(g / safe[..., None]).clip(-127, 127).astype(np.int8)
    return q.reshape(shape), scale


def dequantize_int8(q: np.ndarray, scale: np.ndarray, group: int) -> np.ndarray:
    """float32 values of int8 `q` with fp16 `scale`: one pass, the int8 cast fused into the multiply."""
    shape = q.shape
    grouped = q.reshape(*shape[:-1], shape[-1] // group, group)
    out = np.multiply(grouped, scale.astype(np.float32)[..., None], dtype=np.float32)
    return out.reshape(shape)


def encode_block(
    key: bytes,
    fingerprint: str,
    dtype: str,
    k: np.ndarray,
    v: np.ndarray,
    logits: np.ndarray | None = None,
    kind: int = KIND_BLOCK,
) -> bytes:
    """Serialise K/V ([n_layers, n_kv_heads, n_tokens, head_dim]) and optional logits into block bytes."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown KV block dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    if k.shape != v.shape or k.ndim != 4:
        raise ValueError(f"K {k.shape} and V {v.shape} must share one [layers, heads, tokens, dim] shape")
    n_layers, n_heads, n_tokens, head_dim = k.shape
    code, np_dtype = DTYPES[dtype]
    parts: list[bytes | memoryview] = []
    group = 0
    if dtype == "int8":
        group = int8_group(head_dim)
        for x in (k, v):
            q, scale = quantize_int8(x, group)
            parts += [q.tobytes(), scale.astype("<f2").tobytes()]
    else:
        for x in (k, v):
            parts.append(np.ascontiguousarray(x, dtype=np_dtype).reshape(-1).view(np.uint8).data)
    n_logits = 0
    if logits is not None:
        lg = np.ascontiguousarray(logits, dtype="<f4").reshape(-1)
        n_logits = lg.size
        parts.append(lg.view(np.uint8).data)
    payload_len = sum(len(p) for p in parts)
    head = _HEAD.pack(
        MAGIC,
        FORMAT_VERSION,
        kind,
        code,
        n_tokens,
        n_layers,
        n_heads,
        head_dim,
        group,
        n_logits,
        fingerprint_bytes(fingerprint),
        key,
        payload_len,
    )
    h = xxhash.xxh3_128(head)
    for p in parts:
        h.update(p)
    out = bytearray(HEADER_LEN + payload_len)
    out[: _HEAD.size] = head
    out[_HEAD.size : HEADER_LEN] = h.digest()
    pos = HEADER_LEN
    for p in parts:
        out[pos : pos + len(p)] = p
        pos += len(p)
    return bytes(out)


@dataclass(frozen=True)
class Header:
    kind: int
    dtype: str
    n_tokens: int
    shape: tuple[int, int, int, int]  # [n_layers, n_kv_heads, n_tokens, head_dim]
    group: int
    n_scales: int
    n_logits: int
    payload_len: int


def parse_header(head: bytes | memoryview, size: int, key: bytes, expect: BlockSpace, kind: int) -> Header:
    """Check a block's header (the first HEADER_LEN bytes of a record of `size` bytes) against the key,
    kind and space it is read for; raise BlockFormatError saying what is wrong."""
    if len(head) < HEADER_LEN or size < HEADER_LEN:
        raise BlockFormatError(f"truncated header ({min(len(head), size)} of {HEADER_LEN} bytes)")
    (magic, version, got_kind, code, n_tokens, n_layers, n_heads, head_dim, group, n_logits, fp, got_key,
     payload_len) = _HEAD.unpack_from(head)  # fmt: skip
    if magic != MAGIC:
        raise BlockFormatError(f"bad magic {magic!r}")
    if version != FORMAT_VERSION:
        raise BlockFormatError(f"format version {version}, this reader knows {FORMAT_VERSION}")
    if got_key != key or got_kind != kind:
        raise BlockFormatError("stored under the wrong key")
    if fp != fingerprint_bytes(expect.identity):
        raise BlockFormatError("made by a different model (fingerprint mismatch)")
    if (n_layers, n_heads, head_dim) != (expect.layers, expect.kv_heads, expect.head_dim):
        raise BlockFormatError(
            f"shape layers={n_layers} heads={n_heads} dim={head_dim} does not match the model's "
            f"{expect.layers}/{expect.kv_heads}/{expect.head_dim}"
        )
    if size != HEADER_LEN + payload_len:
        raise BlockFormatError(f"truncated payload ({size - HEADER_LEN} of {payload_len} bytes)")
    name = _DTYPE_BY_CODE.get(code)
    if name is None:
        raise BlockFormatError(f"unknown dtype code {code}")
    count = n_layers * n_heads * n_tokens * head_dim
    n_scales = 0
    if name == "int8":
        if group <= 0 or head_dim % group:
            raise BlockFormatError(f"bad int8 group {group} for head_dim {head_dim}")
        n_scales = count // group
    expected = 2 * (count * DTYPES[name][1].itemsize + n_scales * 2) + 4 * n_logits
    if expected != payload_len:
        raise BlockFormatError(f"payload length {payload_len} does not match its shape ({expected})")
    shape = (n_layers, n_heads, n_tokens, head_dim)
    return Header(got_kind, name, n_tokens, shape, group, n_scales, n_logits, payload_len)


def checksum_of(head: bytes | memoryview) -> bytes:
    return bytes(head[_HEAD.size : HEADER_LEN])


def new_checksum(head: bytes | memoryview) -> Any:
    """The running xxh3-128 of a block: the header before the checksum; the payload goes in next."""
    return xxhash.xxh3_128(head[: _HEAD.size])


def views(buf: Any, header: Header) -> DecodedBlock:
    """K, V (and logits) of a checked block, viewing `buf` (int8 blocks: dequantized copies)."""
    np_dtype = DTYPES[header.dtype][1]
    shape, group = header.shape, header.group
    count = shape[0] * shape[1] * shape[2] * shape[3]
    pos = HEADER_LEN
    arrays = []
    for _ in range(2):
        x = np.frombuffer(buf, np_dtype, count, pos).reshape(shape)
        pos += count * np_dtype.itemsize
        if header.dtype == "int8":
            scale = np.frombuffer(buf, "<f2", header.n_scales, pos).reshape(*shape[:3], shape[3] // group)
            pos += header.n_scales * 2
            x = dequantize_int8(x, scale, group)
        arrays.append(x)
    logits = np.frombuffer(buf, "<f4", header.n_logits, pos) if header.n_logits else None
    return DecodedBlock(arrays[0], arrays[1], header.n_tokens, logits)


def decode_block(
    data: bytes | bytearray | memoryview, key: bytes, expect: BlockSpace, kind: int
) -> DecodedBlock:
    """Check and parse block bytes; raise BlockFormatError saying what is wrong. Arrays view `data`."""
    buf = memoryview(data)
    header = parse_header(buf[:HEADER_LEN], len(buf), key, expect, kind)
    h = new_checksum(buf)
    h.update(buf[HEADER_LEN:])
    if h.digest() != checksum_of(buf):
        raise BlockFormatError("checksum mismatch")
    return views(buf, header)
