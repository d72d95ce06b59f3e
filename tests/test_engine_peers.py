"""The llama.cpp peer of the engine benchmarks: the random checkpoint converts to GGUF with the converter
the llama-cpp-python sdist vendors (set LLAMA_CPP_SDIST to an unpacked sdist to run these)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import llama_peer
from bench.engine_bench import QWEN3_06B, write_random_checkpoint

SDIST = os.environ.get("LLAMA_CPP_SDIST")
TINY = QWEN3_06B | {
    "num_hidden_layers": 2,
    "vocab_size": 512,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
}


def test_the_bench_says_how_to_enable_llama_cpp_when_it_is_missing() -> None:
    if llama_peer.llama_cpp_version() is not None:
        pytest.skip("llama-cpp-python is installed")
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-m", "bench.engine_peers"], cwd=root, capture_output=True, text=True, check=False
    )
    assert proc.returncode != 0
    assert "CMAKE_ARGS" in proc.stderr and ".[bench]" in proc.stderr


@pytest.mark.skipif(not SDIST, reason="LLAMA_CPP_SDIST (an unpacked llama-cpp-python sdist) not set")
def test_the_random_checkpoint_converts_to_gguf_f16_with_the_vendored_converter(tmp_path: Path) -> None:
    write_random_checkpoint(tmp_path / "m", TINY)
    llama_peer.write_tokenizer(tmp_path / "m")
    vendor = llama_peer.vendored_llama_cpp("unused: LLAMA_CPP_SDIST is set")
    out = llama_peer.convert(vendor, tmp_path / "m", tmp_path / "m.gguf")
    sys.path.insert(0, str(vendor / "gguf-py"))
    import gguf

    reader = gguf.GGUFReader(out)
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 2 + 11 * TINY["num_hidden_layers"]  # embed, final norm, 11 a layer (output: tied)
    embed = tensors["token_embd.weight"]
    assert embed.tensor_type.name == "F16"
    # the same random values the bf16 checkpoint holds, to float16 precision
    from engine.safetensors_io import Checkpoint

    checkpoint = Checkpoint(tmp_path / "m")
    ours = np.array(checkpoint.float32("model.embed_tokens.weight"))
    checkpoint.close()
    np.testing.assert_allclose(np.asarray(embed.data, np.float32).reshape(ours.shape), ours, atol=1e-4)


@pytest.mark.parametrize("bits", [8, 4])
def test_the_bench_quantizes_as_mlx_lm_and_numpy_keeps_it_packed(tmp_path: Path, bits: int) -> None:
    """bench.mlx_quant's copy of the bf16 checkpoint: every matrix packed with bfloat16 scales, computing
    on numpy what mlx computes from the same file."""
    import engine
    from bench.mlx_quant import write_quantized
    from engine.backends.numpy_quant import QuantWeight

    write_random_checkpoint(tmp_path / "bf16", TINY)
    write_quantized(tmp_path / "bf16", tmp_path / "q", bits, 64)
    on_numpy = engine.load_model(tmp_path / "q", backend="numpy")
    matrices = on_numpy.network.matrices()
    assert all(
        isinstance(w, QuantWeight) and (w.bits, w.group_size, w.kind) == (bits, 64, 2) for w in matrices
    )
    prompt = list(range(3, 40))
    on_mlx = engine.load_model(tmp_path / "q", backend="mlx")
    assert np.abs(on_numpy.logits(prompt) - on_mlx.logits(prompt)).max() <= 1e-4
