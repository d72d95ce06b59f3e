"""llama.cpp as a peer in the engine benchmarks: the random checkpoint converted to GGUF, and a runner.

llama.cpp comes from llama-cpp-python, the optional `bench` extra, built from its PyPI sdist so that
ggml is compiled for this CPU:

    CMAKE_ARGS="-DGGML_NATIVE=ON" pip install -e '.[bench]' --no-binary llama-cpp-python

Conversion uses the converter the same sdist vendors (vendor/llama.cpp/convert_hf_to_gguf.py and its
gguf-py), so the GGUF matches the llama.cpp it runs on: the sdist of the installed version is fetched
with pip (or found at $LLAMA_CPP_SDIST, an unpacked sdist) and kept under $WORKBENCH_CACHE. F16 comes
from the converter, Q8_0 and Q4_0 from llama.cpp's own quantizer (`llama_model_quantize`).

The random checkpoint has no real tokenizer, and the bench never tokenizes (both engines get the same
prompt ids): `write_tokenizer` writes a byte-level one, and the converter is told its pre-tokenizer is
Qwen2's instead of recognising it by the hash of a sample text (which only real tokenizers match).

    python -m bench.llama_peer --convert VENDOR MODEL_DIR OUTTYPE OUT   # the converter, as the bench runs it
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ENABLE_HINT = (
    "llama.cpp peers need the bench extra, built for this CPU: "
    "CMAKE_ARGS=\"-DGGML_NATIVE=ON\" pip install '.[bench]' --no-binary llama-cpp-python"
)
QUANT_TYPES = {"Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0"}


def llama_cpp_version() -> str | None:
    """The installed llama-cpp-python's version, or None without the bench extra."""
    try:
        import llama_cpp
    except ImportError:
        return None
    return str(llama_cpp.__version__)


def _cache_dir() -> Path:
    env = os.environ.get("WORKBENCH_CACHE")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "workbench"
    return base / "llama-cpp-sdist"


def vendored_llama_cpp(version: str) -> Path:
    """vendor/llama.cpp of the llama-cpp-python sdist `version`: $LLAMA_CPP_SDIST, or fetched once."""
    env = os.environ.get("LLAMA_CPP_SDIST")
    root = Path(env) if env else _cache_dir() / f"llama_cpp_python-{version}"
    vendor = root / "vendor" / "llama.cpp"
    if (vendor / "convert_hf_to_gguf.py").is_file():
        return vendor
    if env:
        raise RuntimeError(f"LLAMA_CPP_SDIST={env}: no vendor/llama.cpp/convert_hf_to_gguf.py in it")
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", tmp]
        proc = subprocess.run([*cmd, f"llama-cpp-python=={version}"], capture_output=True, text=True)
        archives = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if proc.returncode != 0 or not archives:
            raise RuntimeError(
                f"cannot fetch the llama-cpp-python {version} sdist: {proc.stderr.strip()[-500:]}"
            )
        with tarfile.open(archives[0]) as tar:
            members = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name]
            tar.extractall(tmp, members=members, filter="data")
        os.replace(Path(tmp) / root.name, root)
    return vendor


def write_tokenizer(directory: Path) -> None:
    """A byte-level BPE tokenizer (256 byte tokens, one merge, an end-of-text token) for the converter."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["Ġt"] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[("Ġ", "t")]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>"}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))


def convert(vendor: Path, model_dir: Path, out: Path, outtype: str = "f16") -> Path:
    """model_dir (safetensors + config + tokenizer) -> GGUF `out`, by the vendored converter."""
    cmd = [
        sys.executable,
        "-m",
        "bench.llama_peer",
        "--convert",
        str(vendor),
        str(model_dir),
        outtype,
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"convert_hf_to_gguf.py failed: {proc.stderr.strip()[-1500:]}")
    return out


def quantize(src: Path, dst: Path, kind: str) -> Path:
    """llama.cpp's quantizer (llama_model_quantize, its defaults for `kind`): GGUF src -> dst."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[kind])
    params.nthread = os.cpu_count() or 1
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params) != 0:
        raise RuntimeError(f"llama_model_quantize {src} -> {kind} failed")
    return dst


def gguf_models(model_dir: Path, out_dir: Path, kinds: list[str]) -> dict[str, Path]:
    """GGUF files of the checkpoint at model_dir, one per kind of "F16", "Q8_0", "Q4_0"."""
    version = llama_cpp_version()
    if version is None:
        raise RuntimeError(ENABLE_HINT)
    write_tokenizer(model_dir)
    f16 = convert(vendored_llama_cpp(version), model_dir, out_dir / "model-F16.gguf")
    return {k: f16 if k == "F16" else quantize(f16, out_dir / f"model-{k}.gguf", k) for k in kinds}


def _run_converter(vendor: Path, argv: list[str]) -> None:
    """The vendored convert_hf_to_gguf.py's main, with the pre-tokenizer named instead of detected."""
    import runpy

    sys.path[:0] = [str(vendor), str(vendor / "gguf-py")]
    sys.argv = [str(vendor / "convert_hf_to_gguf.py"), *argv]
    import conversion.base  # the vendored converter's package

    conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "qwen2"  # type: ignore[method-assign]
    runpy.run_path(sys.argv[0], run_name="__main__")


class LlamaRunner:
    """llama.cpp (llama-cpp-python) on one GGUF, with EngineRunner's interface: prefill on a fresh
    context, greedy decode one token per step. llama-cpp-python's defaults (flash attention off)
    except the ones named here."""

    def __init__(self, gguf: Path, context: int, threads: int) -> None:
        import llama_cpp

        t0 = time.perf_counter()
        self.llm = llama_cpp.Llama(
            model_path=str(gguf),
            n_ctx=context,
            n_batch=2048,  # llama.cpp's default logical batch; physical batches (n_ubatch) of 512
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        self.load_s = time.perf_counter() - t0
        self.weight_bytes = int(llama_cpp.llama_model_size(self.llm._model.model))
        self.vocab = int(self.llm.n_vocab())

    def prefill(self, ids: list[int]) -> None:
        """From position 0: eval drops the cached positions from n_tokens on, which reset zeroes."""
        self.llm.reset()
        self.llm.eval(ids)

    def last_logits(self) -> np.ndarray:
        """The last position's logits (Llama.scores holds them only with logits_all=True)."""
        return np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.vocab,))

    def start_decode(self, ids: list[int]) -> None:
        self.prefill(ids)

    def decode_step(self) -> None:
        self.llm.eval([int(np.argmax(self.last_logits()))])

    def info(self) -> dict[str, Any]:
        return {"weight_bytes": self.weight_bytes, "load_s": self.load_s}


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--convert":
        vendor, model_dir, outtype, out = sys.argv[2:]
        _run_converter(Path(vendor), [model_dir, "--outtype", outtype, "--outfile", out])
    else:
        raise SystemExit(__doc__)
