"""The block format: round trips per dtype, int8 error bounds and size, and precise rejection of bad bytes."""

from __future__ import annotations

import numpy as np
import pytest

from kvstore.format import (
    HEADER_LEN,
    KIND_BLOCK,
    KIND_TAIL,
    BlockFormatError,
    decode_block,
    encode_block,
)
from kvstore.space import BlockSpace

FP = "ab" * 32
KEY = bytes(range(32))
SHAPE = BlockSpace(FP, "float32", layers=3, kv_heads=2, head_dim=64)


def kv(tokens: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    k = rng.standard_normal((3, 2, tokens, 64), dtype=np.float32) * 3
    k[..., 7] *= 40  # an outlier channel, as real keys have
    return k, rng.standard_normal((3, 2, tokens, 64), dtype=np.float32)


def test_float32_round_trip_is_exact_and_carries_logits() -> None:
    k, v = kv()
    logits = np.arange(10, dtype=np.float32)
    block = decode_block(encode_block(KEY, FP, "float32", k, v, logits, KIND_TAIL), KEY, SHAPE, KIND_TAIL)
    assert np.array_equal(block.k, k) and np.array_equal(block.v, v) and block.n_tokens == 5
    assert np.array_equal(block.logits, logits)


def test_int8_halves_fp16_bytes_and_bounds_the_error_per_group() -> None:
    k, v = kv(tokens=64)
    sizes = {d: len(encode_block(KEY, FP, d, k, v)) - HEADER_LEN for d in ("float32", "float16", "int8")}
    assert sizes["float16"] == sizes["float32"] // 2
    assert sizes["int8"] <= 0.54 * sizes["float16"]  # int8 values + one fp16 scale per 32 values
    block = decode_block(encode_block(KEY, FP, "int8", k, v), KEY, SHAPE, KIND_BLOCK)
    groups = np.abs(k).reshape(3, 2, 64, 2, 32).max(axis=-1, keepdims=True)
    err = np.abs(block.k - k).reshape(3, 2, 64, 2, 32)
    assert (err <= groups / 254 * 1.01 + 1e-6).all()  # half a quantization step of its own group


def test_an_empty_tail_holds_only_logits() -> None:
    k, v = kv(tokens=0)
    data = encode_block(KEY, FP, "int8", k, v, np.ones(7, np.float32), KIND_TAIL)
    block = decode_block(data, KEY, SHAPE, KIND_TAIL)
    assert block.n_tokens == 0 and block.k.shape == (3, 2, 0, 64) and block.logits.tolist() == [1.0] * 7


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d[:-1], "truncated payload"),
        (lambda d: d[:10], "truncated header"),
        (lambda d: b"XXXX" + d[4:], "bad magic"),
        (lambda d: d[:-3] + bytes([d[-3] ^ 1]) + d[-2:], "checksum mismatch"),
        (lambda d: d[:4] + b"\x09\x00" + d[6:], "format version 9"),
    ],
)
def test_bad_bytes_are_rejected_with_the_reason(mutate, message: str) -> None:
    data = encode_block(KEY, FP, "float32", *kv())
    with pytest.raises(BlockFormatError, match=message):
        decode_block(mutate(data), KEY, SHAPE, KIND_BLOCK)


def test_blocks_of_another_key_model_or_shape_are_refused() -> None:
    data = encode_block(KEY, FP, "float16", *kv())
    with pytest.raises(BlockFormatError, match="wrong key"):
        decode_block(data, bytes(32), SHAPE, KIND_BLOCK)
    with pytest.raises(BlockFormatError, match="wrong key"):
        decode_block(data, KEY, SHAPE, KIND_TAIL)
    with pytest.raises(BlockFormatError, match="different model"):
        decode_block(data, KEY, BlockSpace("cd" * 32, "float32", 3, 2, 64), KIND_BLOCK)
    with pytest.raises(BlockFormatError, match="does not match the model's 3/4/64"):
        decode_block(data, KEY, BlockSpace(FP, "float32", 3, 4, 64), KIND_BLOCK)
