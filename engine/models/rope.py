"""Rotary embedding frequencies from config.json, in both layouts found in the wild.

Classic: `rope_theta` + `rope_scaling` (most hub checkpoints). transformers 5: `rope_parameters`
holding `rope_theta`, `rope_type` and the scaling fields. Computed in float32 the way transformers does,
so positions rotate by bit-for-bit the same angles.
"""

from __future__ import annotations

import math

import numpy as np

from engine.errors import UnsupportedArchitectureError

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def rope_settings(
    rope_theta: float | None, rope_scaling: dict | None, rope_parameters: dict | None
) -> tuple[float, dict]:
    """(theta, scaling) whichever layout the config uses; scaling always has a `rope_type`."""
    params = dict(rope_parameters or {})
    scaling = dict(rope_scaling or {})
    theta = params.pop("rope_theta", None) or rope_theta or 10000.0
    merged = {**scaling, **params}
    merged["rope_type"] = merged.get("rope_type") or merged.get("type") or "default"
    return float(theta), merged


def inv_freq(head_dim: int, theta: float, scaling: dict, max_position_embeddings: int) -> np.ndarray:
    """float32 [head_dim / 2] inverse frequencies for `rope_type` default, linear or llama3."""
    rope_type = scaling["rope_type"]
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedArchitectureError(
            f"rope_type {rope_type!r} is not supported (supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
        )
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    freq = (np.float32(1.0) / (np.float32(theta) ** exponents)).astype(np.float32)
    if rope_type == "linear":
        return (freq / np.float32(scaling["factor"])).astype(np.float32)
    if rope_type == "llama3":
        return _llama3(freq, scaling, max_position_embeddings)
    return freq


def _llama3(freq: np.ndarray, scaling: dict, max_position_embeddings: int) -> np.ndarray:
    factor = np.float32(scaling["factor"])
    low = np.float32(scaling.get("low_freq_factor", 1.0))
    high = np.float32(scaling.get("high_freq_factor", 4.0))
    old_context = np.float32(scaling.get("original_max_position_embeddings", max_position_embeddings))
    low_wavelen = old_context / low
    high_wavelen = old_context / high
    wavelen = np.float32(2 * math.pi) / freq
    scaled = np.where(wavelen > low_wavelen, freq / factor, freq).astype(np.float32)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)
