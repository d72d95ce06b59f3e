"""The engines engine_bench times, each behind the same small interface: `prefill(ids)` on a fresh
cache, and `start_decode(ids)` then `decode_step()` for greedy decoding one token at a time."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


class EngineRunner:
    """engine.Model on one backend: prefill on a fresh cache, greedy decode one token per step."""

    def __init__(
        self, path: Path, backend: str, precision: str = "fp32", kv_dtype: str | None = None
    ) -> None:
        import engine

        t0 = time.perf_counter()
        self.model = engine.load_model(path, backend=backend, precision=precision, kv_dtype=kv_dtype)
        self.load_s = time.perf_counter() - t0

    def prefill(self, ids: list[int]) -> None:
        self.model.forward(ids, self.model.make_cache())

    def start_decode(self, ids: list[int]) -> None:
        self.cache = self.model.make_cache()
        self.logits = self.model.forward(ids, self.cache)

    def decode_step(self) -> None:
        self.logits = self.model.forward([int(np.argmax(self.logits))], self.cache)

    def start_decode_at(self, context: int) -> None:
        """A cache already holding `context` positions, filled with random keys and values instead of
        prefilled (a decode step reads the same bytes whatever they hold), then decode from there."""
        rng = np.random.default_rng(context)
        self.cache = self.model.make_cache()
        c = self.model.config
        for start in range(0, context, 256):  # in pieces: a whole 8k history at once would double its memory
            shape = (c.num_hidden_layers, c.num_key_value_heads, min(256, context - start), c.head_dim)
            self.cache.extend(rng.standard_normal(shape, np.float32), rng.standard_normal(shape, np.float32))
        self.logits = self.model.forward([1], self.cache)


def weights_of(network: object) -> list:
    """The network's linear weights, [out, in] each: 4 per layer, then the output projection."""
    mats = []
    for layer in network.layers:  # type: ignore[attr-defined]
        a, m = layer.self_attn, layer.mlp
        mats += [a.qkv, a.o_proj, m.gate_up, m.down]
    return [*mats, network.lm_head]  # type: ignore[attr-defined]


class WeightFloorRunner:
    """Plain numpy fp32 passes over the model's own weight matrices. Decode: x @ W once each, what one
    decode step costs in memory traffic alone. Prefill: the same products for every row, in the
    engine's chunks, and the output projection for the last row: the weight matmuls alone, without
    attention or anything elementwise. Weights the engine keeps as bfloat16 are widened to float32
    here: the floor is float32 by definition (issue #3)."""

    def __init__(self, network: object, chunk: int) -> None:
        # [out, in] weights, used as numpy_backend.linear does: x @ w.T
        self.mats = [(w.widen() if hasattr(w, "widen") else w).T for w in weights_of(network)]
        self.xs = [np.ones((1, w.shape[0]), np.float32) for w in self.mats]
        # one input per width, reused as the engine reuses its activations (not 28 layers' worth)
        self.chunk_xs = {w.shape[0]: np.ones((chunk, w.shape[0]), np.float32) for w in self.mats[:-1]}
        self.chunk = chunk
        self.nbytes = sum(w.nbytes for w in self.mats)

    def prefill(self, ids: list[int]) -> None:
        for start in range(0, len(ids), self.chunk):
            rows = min(self.chunk, len(ids) - start)
            for w in self.mats[:-1]:
                self.chunk_xs[w.shape[0]][:rows] @ w
        self.xs[-1] @ self.mats[-1]

    def start_decode(self, ids: list[int]) -> None:
        pass

    def decode_step(self) -> None:
        for x, w in zip(self.xs, self.mats, strict=True):
            x @ w


class TransformersRunner:
    """transformers (torch CPU fp32) on the same checkpoint; `last_only` asks for the last logits only."""

    def __init__(self, path: Path, last_only: bool = False, model: object = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        t0 = time.perf_counter()
        self.model = model or AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.load_s = time.perf_counter() - t0
        self.kwargs = {"logits_to_keep": 1} if last_only else {}

    def prefill(self, ids: list[int]) -> None:
        with self.torch.inference_mode():
            self.model(self.torch.tensor([ids]), **self.kwargs)  # type: ignore[operator]

    def start_decode(self, ids: list[int]) -> None:
        with self.torch.inference_mode():
            out = self.model(self.torch.tensor([ids]), use_cache=True, logits_to_keep=1)  # type: ignore[operator]
        self.past, self.token = out.past_key_values, out.logits[0, -1].argmax().view(1, 1)

    def decode_step(self) -> None:
        with self.torch.inference_mode():
            out = self.model(self.token, past_key_values=self.past, use_cache=True)  # type: ignore[operator]
        self.past, self.token = out.past_key_values, out.logits[0, -1].argmax().view(1, 1)
