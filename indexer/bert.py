"""A BERT encoder (BertModel: embeddings -> N post-LN transformer layers) on the engine's backends.

Sequences of one batch are packed into a single [tokens, hidden] matrix, so every linear layer is one GEMM
with no padding; attention runs per group of equal-length sequences (bidirectional: the backend's
`sdpa` with `causal_offset = T - 1` lets every query see every key).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ModelFormatError

GELU_BLOCK_ROWS = 128


@dataclass(frozen=True)
class BertConfig:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    position_embedding_type: str = "absolute"

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: Path) -> BertConfig:
        known = {f.name for f in fields(cls)}
        required = (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "vocab_size",
        )
        missing = [name for name in required if name not in raw]
        if missing:
            raise ModelFormatError(f"{source}: config.json lacks {', '.join(missing)}")
        cfg = cls(**{k: v for k, v in raw.items() if k in known})
        if cfg.hidden_act not in ("gelu", "gelu_new", "gelu_python"):
            raise ModelFormatError(f"{source}: hidden_act {cfg.hidden_act!r} is not supported (gelu only)")
        if cfg.position_embedding_type != "absolute":
            raise ModelFormatError(f"{source}: position_embedding_type {cfg.position_embedding_type!r} "
                                   "is not supported (absolute only)")  # fmt: skip
        return cfg

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class BertModel:
    """Weights on the backend `ops`; `forward` maps token id sequences to last hidden states."""

    def __init__(self, cfg: BertConfig, weights: dict[str, np.ndarray], ops: Any, source: Path) -> None:
        self.cfg, self.ops = cfg, ops
        # Checkpoints of BertFor* heads prefix everything with "bert."; the encoder is the same.
        weights = {k.removeprefix("bert."): v for k, v in weights.items()}

        def take(name: str, shape: tuple[int, ...]) -> np.ndarray:
            if name not in weights:
                raise ModelFormatError(f"{source}: tensor {name} is missing")
            arr = weights[name]
            if tuple(arr.shape) != shape:
                raise ModelFormatError(
                    f"{source}: tensor {name} has shape {tuple(arr.shape)}, expected {shape}"
                )
            return np.asarray(arr, dtype=np.float32)

        h, i = cfg.hidden_size, cfg.intermediate_size
        vec = ops.asarray
        mat = ops.linear_weight
        e = "embeddings."
        self.word = vec(take(e + "word_embeddings.weight", (cfg.vocab_size, h)))
        self.position = vec(take(e + "position_embeddings.weight", (cfg.max_position_embeddings, h)))
        self.token_type0 = vec(take(e + "token_type_embeddings.weight", (cfg.type_vocab_size, h))[0])
        self.emb_ln = (vec(take(e + "LayerNorm.weight", (h,))), vec(take(e + "LayerNorm.bias", (h,))))
        self.layers: list[dict[str, Any]] = []
        for n in range(cfg.num_hidden_layers):
            p = f"encoder.layer.{n}."
            qkv = [take(f"{p}attention.self.{x}.weight", (h, h)) for x in ("query", "key", "value")]
            qkv_b = [take(f"{p}attention.self.{x}.bias", (h,)) for x in ("query", "key", "value")]
            self.layers.append({
                # q, k and v fused into one [3h, h] GEMM.
                "qkv": mat(np.concatenate(qkv, axis=0)), "qkv_b": vec(np.concatenate(qkv_b)),
                "o": mat(take(p + "attention.output.dense.weight", (h, h))),
                "o_b": vec(take(p + "attention.output.dense.bias", (h,))),
                "ln1": (vec(take(p + "attention.output.LayerNorm.weight", (h,))),
                        vec(take(p + "attention.output.LayerNorm.bias", (h,)))),
                "up": mat(take(p + "intermediate.dense.weight", (i, h))),
                "up_b": vec(take(p + "intermediate.dense.bias", (i,))),
                "down": mat(take(p + "output.dense.weight", (h, i))),
                "down_b": vec(take(p + "output.dense.bias", (h,))),
                "ln2": (vec(take(p + "output.LayerNorm.weight", (h,))),
                        vec(take(p + "output.LayerNorm.bias", (h,)))),
            })  # fmt: skip

    def forward(self, sequences: list[list[int]]) -> list[np.ndarray]:
        """Last hidden states, one float32 [T_i, hidden] array per sequence (no padding anywhere)."""
        ops, cfg = self.ops, self.cfg
        lengths = [len(s) for s in sequences]
        if max(lengths) > cfg.max_position_embeddings:
            raise ValueError(f"sequence of {max(lengths)} tokens exceeds max_position_embeddings "
                             f"{cfg.max_position_embeddings}")  # fmt: skip
        ids = np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences])
        positions = np.concatenate([np.arange(n, dtype=np.int64) for n in lengths])
        x = (
            ops.embedding(self.word, ids) + ops.embedding(self.position, positions) + self.token_type0
        )  # [N, h]
        x = ops.layer_norm(x, *self.emb_ln, cfg.layer_norm_eps)
        groups = _equal_length_groups(lengths)
        for layer in self.layers:
            qkv = ops.linear(x, layer["qkv"], layer["qkv_b"])  # [N, 3h]
            ctx = self._attention(qkv, groups)  # [N, h]
            x = ops.layer_norm(
                x + ops.linear(ctx, layer["o"], layer["o_b"]), *layer["ln1"], cfg.layer_norm_eps
            )
            up = self._gelu(ops.linear(x, layer["up"], layer["up_b"]))  # [N, i]
            x = ops.layer_norm(
                x + ops.linear(up, layer["down"], layer["down_b"]), *layer["ln2"], cfg.layer_norm_eps
            )
        ops.eval(x)
        out = ops.to_numpy(x)
        starts = np.cumsum([0, *lengths])
        return [out[starts[j] : starts[j + 1]] for j in range(len(lengths))]

    def _gelu(self, x: Any) -> Any:
        """GELU over cache-sized row blocks: the elementwise passes then run from L2, about twice as fast
        on numpy as one pass over the whole [N, intermediate] matrix."""
        n = x.shape[0]
        if n <= GELU_BLOCK_ROWS:
            return self.ops.gelu(x)
        return self.ops.concatenate(
            [self.ops.gelu(x[i : i + GELU_BLOCK_ROWS]) for i in range(0, n, GELU_BLOCK_ROWS)]
        )

    def _attention(self, qkv: Any, groups: list[tuple[list[int], int, list[int]]]) -> Any:
        """Bidirectional attention per group of equal-length sequences; returns [N, h] in packed order."""
        ops, cfg = self.ops, self.cfg
        h, nh, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim
        pieces: list[tuple[int, Any]] = []
        for starts, t, order in groups:
            b = len(starts)
            rows = np.concatenate([np.arange(s, s + t) for s in starts])
            sel = qkv[ops.asarray(rows, dtype="int32")]  # [b*t, 3h]
            # [b*t, 3, nh, hd] -> [3, b*nh, t, hd]: sequences become extra heads of one sdpa call.
            sel = sel.reshape(b, t, 3, nh, hd).transpose(2, 0, 3, 1, 4).reshape(3, b * nh, t, hd)
            ctx = ops.sdpa(sel[0], sel[1], sel[2], 1.0 / float(np.sqrt(hd)), t - 1)  # [b*nh, t, hd]
            ctx = ctx.reshape(b, nh, t, hd).transpose(0, 2, 1, 3).reshape(b * t, h)
            for j, idx in enumerate(order):
                pieces.append((idx, ctx[j * t : (j + 1) * t]))
        pieces.sort(key=lambda p: p[0])
        return ops.concatenate([p[1] for p in pieces], axis=0)


def _equal_length_groups(lengths: list[int]) -> list[tuple[list[int], int, list[int]]]:
    """(packed start offsets, length, sequence indices) for each set of sequences sharing a length."""
    starts = np.cumsum([0, *lengths])[:-1].tolist()
    by_len: dict[int, list[int]] = {}
    for idx, n in enumerate(lengths):
        by_len.setdefault(n, []).append(idx)
    return [([starts[i] for i in idxs], n, idxs) for n, idxs in by_len.items()]
