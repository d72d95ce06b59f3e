"""Our BERT sentence encoder against transformers on the same weights (all-MiniLM-L6-v2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.errors import ModelFormatError
from indexer.embed import Encoder, default_model_dir
from indexer.index import shared_encoder

TEXTS = [
    "def parse_http_header(line):\n    name, _, value = line.partition(':')\n    return name, value\n",
    "Render the console output",
    "same length one",
    "same length two",
    "x",
    "class ShoppingCart { addItem(item) { this.items.push(item); } }\n" * 30,  # truncated at 256 tokens
    "Ünïcödé text — with punctuation!?",
]


@pytest.fixture(scope="module")
def reference() -> tuple[object, object]:
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModel.from_pretrained(str(default_model_dir())).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(default_model_dir()))
    return model, tokenizer


def hidden_states(reference: tuple[object, object], texts: list[str]) -> tuple[object, object]:
    import torch

    model, tokenizer = reference
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")  # type: ignore[operator]
    with torch.no_grad():
        out = model(**batch).last_hidden_state  # type: ignore[operator]
    return out, batch["attention_mask"].unsqueeze(-1).float()


def test_mean_pooled_embeddings_match_transformers(reference: tuple[object, object]) -> None:
    import torch

    states, mask = hidden_states(reference, TEXTS)
    expected = torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    ours = shared_encoder().encode(TEXTS)
    assert ours.shape == (len(TEXTS), 384) and ours.dtype == np.float32
    cosine = (ours * expected).sum(axis=1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.9999, cosine
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_pooling_mode_comes_from_the_sentence_transformers_config(
    reference: tuple[object, object], tmp_path: Path
) -> None:
    import torch

    model_dir = tmp_path / "cls-model"
    model_dir.mkdir()
    for item in default_model_dir().iterdir():
        if item.name != "1_Pooling":
            (model_dir / item.name).symlink_to(item)
    (model_dir / "1_Pooling").mkdir()
    (model_dir / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 384, "pooling_mode_cls_token": True})
    )
    encoder = Encoder(model_dir)
    assert (encoder.pooling, encoder.normalize, encoder.max_seq_length) == ("cls", True, 256)
    states, _ = hidden_states(reference, TEXTS[:3])
    expected = torch.nn.functional.normalize(states[:, 0], dim=-1).numpy()
    cosine = (encoder.encode(TEXTS[:3]) * expected).sum(axis=1)
    assert cosine.min() >= 0.9999


def test_a_missing_tensor_is_named(tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    model_dir = tmp_path / "broken"
    model_dir.mkdir()
    for name in ("config.json", "tokenizer.json", "modules.json"):
        shutil.copy(default_model_dir() / name, model_dir / name)
    weights = load_file(str(default_model_dir() / "model.safetensors"))
    del weights["encoder.layer.3.output.dense.weight"]
    save_file(weights, str(model_dir / "model.safetensors"))
    with pytest.raises(ModelFormatError, match=r"encoder\.layer\.3\.output\.dense\.weight is missing"):
        Encoder(model_dir)


def test_encoder_counts_its_work_and_keeps_input_order() -> None:
    encoder = shared_encoder()
    calls, texts = encoder.calls, encoder.texts
    a = encoder.encode(["short", "a much longer text that sorts after the short one in its batch"])
    b = encoder.encode(["a much longer text that sorts after the short one in its batch", "short"])
    np.testing.assert_allclose(a, b[::-1], atol=1e-6)
    assert (encoder.calls - calls, encoder.texts - texts) == (2, 4)
    assert encoder.encode([]).shape == (0, 384) and encoder.calls - calls == 2
