"""Llama 2/3.x (and SmolLM2): grouped-query attention, optional attention/MLP biases, llama3 rope scaling
(handled in rope.py), tied or untied embeddings."""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Any

from engine.cache import KVCache
from engine.models.base import BaseModelArgs, CausalLM, kept_rows
from engine.weights import WeightReader


@dataclasses.dataclass
class ModelArgs(BaseModelArgs):
    attention_bias: bool = False
    mlp_bias: bool = False
    rms_norm_eps: float = 1e-6


class Attention:
    def __init__(self, args: ModelArgs, ops: ModuleType, w: WeightReader, prefix: str, inv_freq: Any) -> None:
        self.ops = ops
        self.n_heads, self.n_kv_heads, self.head_dim = (
            args.num_attention_heads,
            args.num_key_value_heads,
            args.head_dim,
        )
        self.scale = self.head_dim**-0.5
        self.inv_freq = inv_freq
        q_size, kv_size = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        self.q_size, self.kv_size = q_size, kv_size
        self.qkv, self.qkv_bias = w.linear(
            [f"{prefix}.q_proj", f"{prefix}.k_proj", f"{prefix}.v_proj"],
            [q_size, kv_size, kv_size],
            args.hidden_size,
            args.attention_bias,
        )
        self.o_proj, self.o_bias = w.linear(
            [f"{prefix}.o_proj"], [args.hidden_size], q_size, args.attention_bias
        )

    def __call__(
        self, x: Any, cache: KVCache, layer: int, offset: int, keep: slice | None = None,
        norm: tuple[Any, float] | None = None,
    ) -> Any:  # fmt: skip
        """Attention over rms_norm(x, *norm) (the block's input norm, fused into the qkv product)."""
        ops, t, d = self.ops, x.shape[0], self.head_dim
        qkv = ops.linear(x, self.qkv, self.qkv_bias, norm)  # [T, (H + 2 Hkv) * D]
        k = qkv[:, self.q_size : self.q_size + self.kv_size].reshape(t, self.n_kv_heads, d).transpose(1, 0, 2)
        v = qkv[:, self.q_size + self.kv_size :].reshape(t, self.n_kv_heads, d).transpose(1, 0, 2)
        k = ops.rope(k, offset, self.inv_freq)
        k, v = cache.update_and_fetch(layer, k, v)  # [Hkv, S, D]
        qkv, offset, t = kept_rows(qkv, offset, t, keep)
        if t == 0:
            return None
        q = qkv[:, : self.q_size].reshape(t, self.n_heads, d).transpose(1, 0, 2)  # [H, T, D]
        q = ops.rope(q, offset, self.inv_freq)
        out = ops.sdpa(q, k, v, self.scale, offset)  # [H, T, D]
        return ops.linear(out.transpose(1, 0, 2).reshape(t, self.n_heads * d), self.o_proj, self.o_bias)


class Model(CausalLM):
    attention_class = Attention
    mlp_bias_field = "mlp_bias"
