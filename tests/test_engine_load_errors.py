"""Bad input: each failure is one clear engine error naming the file, tensor or limit at fault."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors.numpy import load_file, save_file

import engine
from engine.errors import (
    ContextLengthError,
    ModelFormatError,
    ModelNotFoundError,
    UnsupportedArchitectureError,
)
from tests.fixtures.tiny_models import TinyModel

TinyModels = Callable[[str], TinyModel]


@pytest.fixture
def model_copy(tiny_model: TinyModels, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(tiny_model("qwen3").path, target)
    return target


def edit_config(directory: Path, **changes: object) -> None:
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_missing_safetensors(model_copy: Path) -> None:
    (model_copy / "model.safetensors").unlink()
    with pytest.raises(ModelFormatError, match=r"no model\.safetensors"):
        engine.load_model(model_copy, backend="numpy")


def test_truncated_safetensors_names_file_and_tensor(model_copy: Path) -> None:
    path = model_copy / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ModelFormatError, match=r"model\.safetensors: truncated .*tensor '") as err:
        engine.load_model(model_copy, backend="numpy")
    assert str(path) in str(err.value)


def test_truncated_header(model_copy: Path) -> None:
    path = model_copy / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ModelFormatError, match="truncated safetensors file: header"):
        engine.load_model(model_copy, backend="numpy")


def test_wrong_shape_names_tensor_and_shapes(model_copy: Path) -> None:
    path = model_copy / "model.safetensors"
    tensors = load_file(str(path))
    name = "model.layers.1.mlp.down_proj.weight"
    tensors[name] = tensors[name].T.copy()
    save_file(tensors, str(path))
    with pytest.raises(ModelFormatError, match=rf"{name}' has shape \[80, 48\], the config needs \[48, 80\]"):
        engine.load_model(model_copy, backend="numpy")


def test_missing_tensor_is_named(model_copy: Path) -> None:
    path = model_copy / "model.safetensors"
    tensors = load_file(str(path))
    del tensors["model.layers.2.self_attn.k_norm.weight"]
    save_file(tensors, str(path))
    with pytest.raises(
        ModelFormatError, match=r"tensor 'model\.layers\.2\.self_attn\.k_norm\.weight' is missing"
    ):
        engine.load_model(model_copy, backend="numpy")


def test_missing_shard_is_named(tiny_model: TinyModels, tmp_path: Path) -> None:
    target = tmp_path / "sharded"
    shutil.copytree(tiny_model("qwen3_sharded").path, target)
    shards = sorted(target.glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[-1].unlink()
    with pytest.raises(ModelFormatError, match=shards[-1].name):
        engine.load_model(target, backend="numpy")


def test_unsupported_architecture_is_named(model_copy: Path) -> None:
    edit_config(model_copy, architectures=["MambaForCausalLM"], model_type="mamba")
    with pytest.raises(UnsupportedArchitectureError, match="MambaForCausalLM"):
        engine.load_model(model_copy, backend="numpy")


def test_unsupported_rope_type_is_named(model_copy: Path) -> None:
    edit_config(model_copy, rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0})
    with pytest.raises(UnsupportedArchitectureError, match="rope_type 'yarn'"):
        engine.load_model(model_copy, backend="numpy")


def test_directory_without_config_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelFormatError, match=r"not a model directory \(no config\.json\)"):
        engine.load_model(tmp_path, backend="numpy")
    with pytest.raises(ModelFormatError, match="not a model directory"):
        engine.load_model(tmp_path / "notes.txt", backend="numpy")


def test_missing_directory_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="neither a directory nor"):
        engine.load_model(tmp_path / "missing", backend="numpy")


def test_incomplete_config_is_named(model_copy: Path) -> None:
    config = json.loads((model_copy / "config.json").read_text())
    del config["hidden_size"]
    (model_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match=r"config\.json: incomplete config .*hidden_size"):
        engine.load_model(model_copy, backend="numpy")


def test_prompt_longer_than_context_names_the_limit(tiny_model: TinyModels) -> None:
    model = engine.load_model(tiny_model("qwen3").path, backend="numpy")
    with pytest.raises(ContextLengthError, match="context limit of 128 tokens"):
        model.forward(list(range(129)), model.make_cache())
    cache = model.make_cache()
    model.forward(list(range(100)), cache)
    with pytest.raises(ContextLengthError, match=r"129 tokens \(100 cached \+ 29 new\)"):
        model.forward(list(range(29)), cache)
    with pytest.raises(ContextLengthError):
        model.logits(list(range(200)))
