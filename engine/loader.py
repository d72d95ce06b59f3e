"""load_model: a Hugging Face-format directory (or a repo id in the local HF cache) -> engine.Model."""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from types import ModuleType
from typing import Any

from engine import precision as precisions
from engine.backends import get_backend
from engine.cache import KV_DTYPES
from engine.errors import EngineError, ModelFormatError, UnsupportedArchitectureError
from engine.model import Model
from engine.safetensors_io import Checkpoint
from engine.weights import WeightReader

# model_type -> module in engine/models; `architectures` entries that each module implements.
MODEL_TYPES = {"qwen3": "qwen3", "qwen2": "qwen2", "llama": "llama"}
ARCHITECTURES = {"Qwen3ForCausalLM": "qwen3", "Qwen2ForCausalLM": "qwen2", "LlamaForCausalLM": "llama"}

_fingerprints: dict[tuple, str] = {}


def resolve_path(path_or_id: str | Path) -> Path:
    """A model directory as given, else a Hugging Face repo id found locally (engine.hub)."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelFormatError(f"{path}: not a model directory (a model is a directory with config.json)")
    from engine import hub  # the HF cache layout lives there; raises ModelNotFoundError

    return Path(hub.resolve_model_path(str(path_or_id)))


def read_config(directory: Path) -> dict:
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise ModelFormatError(f"{directory}: not a model directory (no config.json)")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{config_path}: not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise ModelFormatError(f"{config_path}: expected a JSON object")
    return config


def architecture_of(config: dict, config_path: Path) -> str:
    """The engine/models module for this config, or UnsupportedArchitectureError naming the entry."""
    architectures = config.get("architectures") or []
    for arch in architectures:
        if arch in ARCHITECTURES:
            return ARCHITECTURES[arch]
    model_type = config.get("model_type")
    if architectures:
        raise UnsupportedArchitectureError(
            f"{config_path}: architectures {architectures} not supported "
            f"(supported: {', '.join(ARCHITECTURES)})"
        )
    if model_type in MODEL_TYPES:
        return MODEL_TYPES[model_type]
    raise UnsupportedArchitectureError(
        f"{config_path}: model_type {model_type!r} not supported (supported: {', '.join(MODEL_TYPES)})"
    )


def fingerprint(
    directory: Path, config: dict, checkpoint: Checkpoint, kv_dtype: str, precision: str = "fp32"
) -> str:
    """sha256 over the canonical config, each safetensors header + size, tokenizer.json's sha256, the
    KV dtype and a precision other than fp32 (int8 computes other keys and values): what decides
    whether stored KV blocks fit this model. Cached per path and mtimes."""
    tokenizer_path = directory / "tokenizer.json"
    files = [directory / "config.json", tokenizer_path, *(f.path for f in checkpoint.files)]
    key = (
        str(directory.resolve()),
        kv_dtype,
        precision,
        tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.exists()),
    )
    if key in _fingerprints:
        return _fingerprints[key]
    digest = hashlib.sha256()
    digest.update(json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    for file in checkpoint.files:
        digest.update(file.path.name.encode())
        digest.update(file.header_bytes)
        digest.update(str(file.size).encode())
    tokenizer_sha = (
        hashlib.sha256(tokenizer_path.read_bytes()).hexdigest() if tokenizer_path.is_file() else ""
    )
    digest.update(tokenizer_sha.encode())
    digest.update(kv_dtype.encode())
    if precision != precisions.DEFAULT:  # fp32 fingerprints stay what they were
        digest.update(f"precision={precision}".encode())
    _fingerprints[key] = result = digest.hexdigest()
    return result


def model_args(path_or_id: str | Path) -> Any:
    """The architecture's ModelArgs of a model (layers, heads, ...), without reading its weights."""
    return _architecture(path_or_id)[3]


def _architecture(path_or_id: str | Path) -> tuple[Path, dict, ModuleType, Any]:
    directory = resolve_path(path_or_id)
    config = read_config(directory)
    config_path = directory / "config.json"
    module = importlib.import_module(f"engine.models.{architecture_of(config, config_path)}")
    try:
        return directory, config, module, module.ModelArgs.from_dict(config)
    except TypeError as exc:
        raise ModelFormatError(f"{config_path}: incomplete config ({exc})") from exc


def load_model(
    path_or_id: str | Path, backend: str | None = None, precision: str = "fp32", kv_dtype: str | None = None
) -> Model:
    """Load a Qwen3 / Qwen2 / Llama checkpoint (plain or MLX-quantized) onto the numpy or mlx backend;
    `precision`: "fp32" (exact) or "int8" (int8 activations for quantized weights, engine/precision.py);
    `kv_dtype`: the KV cache's dtype in memory, "float32" or "float16" (engine.cache.KV_DTYPES; None:
    the backend's compute dtype, float32 on CPUs)."""
    directory, config, module, args = _architecture(path_or_id)
    ops = get_backend(backend)
    precisions.check(precision, ops)
    kv_dtype = check_kv_dtype(kv_dtype, ops)
    checkpoint = Checkpoint(directory)
    try:
        network = module.Model(args, ops, WeightReader(checkpoint, ops, config.get("quantization")))
        precisions.apply(precision, ops, network.matrices(), str(path_or_id))
        model_fingerprint = fingerprint(directory, config, checkpoint, kv_dtype, precision)
    finally:
        checkpoint.close()
    return Model(
        name=str(path_or_id),
        path=directory,
        arch=args.model_type,
        ops=ops,
        config=args,
        network=network,
        fingerprint=model_fingerprint,
        precision=precision,
        kv_dtype=kv_dtype,
    )


def check_kv_dtype(kv_dtype: str | None, ops: ModuleType) -> str:
    """The KV dtype to use: `kv_dtype`, or the backend's compute dtype; EngineError naming a bad one."""
    if kv_dtype is None:
        return str(ops.float_dtype)
    if kv_dtype not in KV_DTYPES:
        raise EngineError(f"unknown kv_dtype {kv_dtype!r}: choose one of {', '.join(KV_DTYPES)}")
    return kv_dtype
