"""What the decoder-only architectures share: config parsing, the SwiGLU MLP, the pre-norm block and
the embed -> blocks -> norm -> lm_head stack. Each architecture file supplies its Attention."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from types import ModuleType
from typing import Any, ClassVar

from engine.cache import KVCache
from engine.errors import PassCancelled
from engine.models import rope
from engine.weights import WeightReader


@dataclasses.dataclass
class BaseModelArgs:
    """Config fields under their Hugging Face names; unknown keys in config.json are ignored."""

    model_type: str
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    vocab_size: int
    rms_norm_eps: float
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    rope_theta: float | None = None
    rope_scaling: dict | None = None
    rope_parameters: dict | None = None
    hidden_act: str = "silu"

    @classmethod
    def from_dict(cls, config: dict) -> BaseModelArgs:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in names})

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads

    def inv_freq(self) -> Any:
        theta, scaling = rope.rope_settings(self.rope_theta, self.rope_scaling, self.rope_parameters)
        return rope.inv_freq(self.head_dim, theta, scaling, self.max_position_embeddings)


class MLP:
    """SwiGLU: down(silu(gate(x)) * up(x)), with gate and up fused into one matmul. The RMSNorm before it
    and the residual add after it are passed in, so that a backend can fuse them into the products
    (numpy decode: one C call each, numpy_decode.py)."""

    def __init__(
        self,
        ops: ModuleType,
        w: WeightReader,
        prefix: str,
        hidden: int,
        intermediate: int,
        bias: bool = False,
    ) -> None:
        self.ops = ops
        self.intermediate = intermediate
        self.gate_up, self.gate_up_bias = w.linear(
            [f"{prefix}.gate_proj", f"{prefix}.up_proj"], [intermediate, intermediate], hidden, bias
        )
        self.down, self.down_bias = w.linear([f"{prefix}.down_proj"], [hidden], intermediate, bias)

    def __call__(self, x: Any, norm: tuple[Any, float] | None = None, residual: Any = None) -> Any:
        """residual + down(swiglu(gate_up(rms_norm(x, *norm)))); norm and residual optional."""
        act = self.ops.swiglu_linear(x, self.gate_up, self.gate_up_bias, norm)  # [T, I]
        return self.ops.linear(act, self.down, self.down_bias, residual=residual)


class Block:
    """Pre-norm decoder layer: x + attn(norm(x)), then h + mlp(norm(h))."""

    def __init__(
        self,
        ops: ModuleType,
        w: WeightReader,
        prefix: str,
        args: BaseModelArgs,
        attention: Any,
        mlp_bias: bool = False,
    ) -> None:
        self.ops = ops
        self.eps = args.rms_norm_eps
        self.self_attn = attention
        self.mlp = MLP(ops, w, f"{prefix}.mlp", args.hidden_size, args.intermediate_size, mlp_bias)
        self.input_layernorm = w.vector(f"{prefix}.input_layernorm.weight", args.hidden_size)
        self.post_attention_layernorm = w.vector(
            f"{prefix}.post_attention_layernorm.weight", args.hidden_size
        )

    def __call__(self, x: Any, cache: KVCache, layer: int, offset: int, keep: slice | None = None) -> Any:
        """`keep`: only these rows' outputs are read (see CausalLM); every row's keys and values still
        go to the cache. None when no row is kept."""
        attn = self.self_attn(x, cache, layer, offset, keep, norm=(self.input_layernorm, self.eps))
        if attn is None:
            return None
        h = (x if keep is None else x[keep]) + attn
        return self.mlp(h, norm=(self.post_attention_layernorm, self.eps), residual=h)


def kept_rows(x: Any, offset: int, t: int, keep: slice | None) -> tuple[Any, int, int]:
    """x's rows in `keep` (all when None), the position of the first, and their count."""
    if keep is None:
        return x, offset, t
    return x[keep], offset + keep.start, keep.stop - keep.start


class CausalLM:
    """embed_tokens -> layers -> norm -> lm_head (tied to the embedding when the config says so)."""

    attention_class: ClassVar[type]
    mlp_bias_field: ClassVar[str | None] = None

    def __init__(self, args: BaseModelArgs, ops: ModuleType, w: WeightReader) -> None:
        self.args = args
        self.ops = ops
        inv_freq = ops.asarray(args.inv_freq(), "float32")
        self.embed_tokens = w.embedding("model.embed_tokens", args.vocab_size, args.hidden_size)
        mlp_bias = bool(getattr(args, self.mlp_bias_field)) if self.mlp_bias_field else False
        self.layers = []
        for i in range(args.num_hidden_layers):
            prefix = f"model.layers.{i}"
            attention = self.attention_class(args, ops, w, f"{prefix}.self_attn", inv_freq)
            self.layers.append(Block(ops, w, prefix, args, attention, mlp_bias))
        self.norm = w.vector("model.norm.weight", args.hidden_size)
        if args.tie_word_embeddings:
            self.lm_head = self.embed_tokens
        else:
            self.lm_head, _ = w.linear(["lm_head"], [args.vocab_size], args.hidden_size)

    def matrices(self) -> list[Any]:
        """Every weight matrix once (a tied output embedding is the token table): the embedding table,
        the output projection, then each layer's qkv, o_proj, gate_up and down."""
        found = [self.embed_tokens, self.lm_head]
        for layer in self.layers:
            a, m = layer.self_attn, layer.mlp
            found += [a.qkv, a.o_proj, m.gate_up, m.down]
        return list({id(w): w for w in found}.values())

    def __call__(
        self, ids: list[int], cache: KVCache, logits: str = "last", cancel: Callable[[], bool] | None = None
    ) -> Any:
        """Run `ids` through the model, appending them to `cache`.

        logits: "all" -> [T, vocab]; "last" -> [1, vocab] (lm_head on the last position only);
        "none" -> None (a prefill chunk whose logits nobody reads). `cancel`, asked before each layer
        after the first: PassCancelled when it says yes (the caller trims the cache).
        """
        offset, t = cache.offset, len(ids)
        # The last layer's outputs feed only the logits: there it computes every row's keys and values
        # (for the cache) but attention and MLP only for the rows whose logits are asked for (as
        # llama.cpp does; 1/28 of a Qwen3-0.6B prefill's attention and MLP work).
        keep = {"all": None, "last": slice(t - 1, t), "none": slice(t, t)}[logits]
        h = self.ops.embedding(self.embed_tokens, ids)  # [T, hidden]
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if i and cancel is not None and cancel():
                raise PassCancelled(f"cancelled before layer {i} of {len(self.layers)}")
            h = layer(h, cache, i, offset, keep if i == last else None)
        if logits == "none":
            return None
        return self.ops.linear(h, self.lm_head, norm=(self.norm, self.args.rms_norm_eps))
