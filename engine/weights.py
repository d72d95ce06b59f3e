"""Turns checkpoint tensors into backend weights, checking every shape against the model's config.

Model definitions ask for weights by their Hugging Face names; this module decides the storage:
fused projections (q/k/v, gate/up) in one matrix; float32 on numpy, except bfloat16 matrices, which
stay bfloat16 where the backend can compute with them (`ops.bf16_weight`); MLX-quantized tensors
(`.weight` packed uint32 + `.scales` + `.biases`) kept quantized where the backend can use them
(`ops.quantized_weight` returns one, on numpy with the scales in the file's own 16-bit form) and
dequantized once, here, where it cannot.
"""

from __future__ import annotations

import mmap
from types import ModuleType
from typing import Any

import numpy as np

from engine.errors import ModelFormatError
from engine.safetensors_io import Checkpoint

DEQUANT_ROWS = 4096  # rows dequantized at a time, bounding the temporaries of big tables


def prefaulted(shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
    """An uninitialised array whose pages are mapped up front by one MAP_POPULATE mmap.

    Weights are written once, in full: faulting their pages in one by one on first write costs more
    than the bf16 -> f32 conversion itself on virtual machines (measured 4.5x slower for 400 MB)."""
    nbytes = np.dtype(dtype).itemsize * int(np.prod(shape, dtype=np.int64))
    if nbytes < (1 << 20) or not hasattr(mmap, "MAP_POPULATE"):
        return np.empty(shape, dtype=dtype)
    buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def dequantize(
    packed: np.ndarray,
    scales: np.ndarray,
    biases: np.ndarray,
    group_size: int,
    bits: int,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """mlx affine dequantization: value j of each uint32 sits at bits [j*bits, (j+1)*bits)."""
    rows = packed.shape[0]
    per_word = 32 // bits
    cols = packed.shape[1] * per_word
    if out is None:
        out = np.empty((rows, cols), dtype=np.float32)
    shifts = (np.arange(per_word, dtype=np.uint32) * bits)[None, None, :]
    mask = np.uint32((1 << bits) - 1)
    for lo in range(0, rows, DEQUANT_ROWS):
        hi = min(rows, lo + DEQUANT_ROWS)
        q = (packed[lo:hi, :, None] >> shifts) & mask  # [r, words, per_word]
        q = q.reshape(hi - lo, cols // group_size, group_size).astype(np.float32)
        q *= scales[lo:hi, :, None].astype(np.float32)
        q += biases[lo:hi, :, None].astype(np.float32)
        out[lo:hi] = q.reshape(hi - lo, cols)
    return out


class WeightReader:
    def __init__(self, checkpoint: Checkpoint, ops: ModuleType, quantization: dict | None) -> None:
        self.checkpoint = checkpoint
        self.ops = ops
        self.quantization = quantization or {}

    def has(self, name: str) -> bool:
        return name in self.checkpoint

    def _float(self, name: str, shape: tuple[int, ...], out: np.ndarray | None = None) -> np.ndarray:
        """A float32 tensor of exactly `shape`: written into `out` if given, else possibly a view of the
        mapped file."""
        self._check(name, shape)
        return self.checkpoint.float32(name, out)

    def _check(self, name: str, shape: tuple[int, ...]) -> None:
        if name not in self.checkpoint:
            raise ModelFormatError(f"{self.checkpoint.directory}: tensor {name!r} is missing")
        info = self.checkpoint.info(name)
        if info.shape != shape:
            raise ModelFormatError(
                f"{self.checkpoint.file_of(name)}: tensor {name!r} has shape "
                f"{list(info.shape)}, the config needs {list(shape)}"
            )

    def _bf16(self, names: list[str], out_sizes: list[int], in_size: int) -> Any:
        """The tensors `names` ([out_i, in_size] each) stacked as one backend bfloat16 weight, or None
        unless all of them are bfloat16 and the backend keeps bfloat16 weights."""
        make = getattr(self.ops, "bf16_weight", None)
        if make is None or any(n not in self.checkpoint for n in names):
            return None
        if any(self.checkpoint.info(n).dtype != "BF16" for n in names):
            return None
        bits = prefaulted((sum(out_sizes), in_size), np.uint16)
        row = 0
        for name, rows in zip(names, out_sizes, strict=True):
            self._check(name, (rows, in_size))
            bits[row : row + rows] = self.checkpoint.raw(name)
            row += rows
        return make(bits)

    def _quant_params(self, prefix: str) -> tuple[int, int] | None:
        if f"{prefix}.scales" not in self.checkpoint:
            return None
        specific = self.quantization.get(prefix)
        params = specific if isinstance(specific, dict) else self.quantization
        if "group_size" not in params or "bits" not in params:
            raise ModelFormatError(
                f"{self.checkpoint.directory}: tensor {prefix + '.scales'!r} is quantized "
                "but config.json has no quantization group_size/bits"
            )
        return int(params["group_size"]), int(params["bits"])

    def _quantized_parts(
        self, prefix: str, out_f: int, in_f: int, group_size: int, bits: int, raw_scales: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """packed uint32 words, scales, biases of `prefix`, shapes checked. Scales and biases in float32,
        or with `raw_scales` as the file stores them where that is 16-bit (float16; bfloat16 as uint16)."""
        if in_f % group_size or 32 % bits:
            raise ModelFormatError(
                f"{self.checkpoint.directory}: {prefix!r} quantized with group_size "
                f"{group_size}, bits {bits} does not fit input size {in_f}"
            )
        name = f"{prefix}.weight"
        info = self.checkpoint.info(name) if name in self.checkpoint else None
        if info is None or info.shape != (out_f, in_f * bits // 32) or info.dtype != "U32":
            found = "missing" if info is None else f"{info.dtype} {list(info.shape)}"
            raise ModelFormatError(
                f"{self.checkpoint.file_of(name) if info else self.checkpoint.directory}: quantized "
                f"tensor {name!r} is {found}, expected U32 {[out_f, in_f * bits // 32]} "
                f"({bits}-bit of [{out_f}, {in_f}])"
            )
        groups = (out_f, in_f // group_size)
        scales, biases = (
            self._scale_part(f"{prefix}.{kind}", groups, raw_scales) for kind in ("scales", "biases")
        )
        return self.checkpoint.raw(name), scales, biases

    def _scale_part(self, name: str, shape: tuple[int, int], raw: bool) -> np.ndarray:
        self._check(name, shape)
        if raw and self.checkpoint.info(name).dtype in ("F16", "BF16"):
            return self.checkpoint.raw(name)
        return self.checkpoint.float32(name)

    def _packed(
        self, prefixes: list[str], out_sizes: list[int], in_size: int, group_size: int, bits: int
    ) -> Any:
        """The quantized projections `prefixes` stacked as one backend quantized weight, or None when the
        backend would rather have them dequantized."""
        raw = getattr(self.ops, "quantized_scales_raw", False)
        parts = [
            self._quantized_parts(p, o, in_size, group_size, bits, raw)
            for p, o in zip(prefixes, out_sizes, strict=True)
        ]
        scale_dtypes = {part[1].dtype for part in parts} | {part[2].dtype for part in parts}
        if len(scale_dtypes) > 1:  # mixed 16-bit kinds across the projections: float32 holds them all
            parts = [
                self._quantized_parts(p, o, in_size, group_size, bits)
                for p, o in zip(prefixes, out_sizes, strict=True)
            ]
        stacked = [np.concatenate([part[i] for part in parts]) for i in range(3)]
        return self.ops.quantized_weight(*stacked, group_size, bits)

    def _release(self, prefix: str) -> None:
        for kind in ("weight", "scales", "biases", "bias"):
            if f"{prefix}.{kind}" in self.checkpoint:
                self.checkpoint.release(f"{prefix}.{kind}")

    def linear(
        self, prefixes: list[str], out_sizes: list[int], in_size: int, bias: bool = False
    ) -> tuple[Any, Any]:
        """One linear weight for the projections `prefixes` stacked along the output dimension
        (e.g. q, k, v), and their stacked bias or None."""
        quant = [self._quant_params(p) for p in prefixes]
        b = None
        if bias:
            b = np.concatenate(
                [self._float(f"{p}.bias", (o,)) for p, o in zip(prefixes, out_sizes, strict=True)]
            )
            b = self.ops.asarray(b)
        weight = None
        if quant[0] is not None and len(set(quant)) == 1 and hasattr(self.ops, "quantized_weight"):
            weight = self._packed(prefixes, out_sizes, in_size, *quant[0])
        elif all(q is None for q in quant):
            weight = self._bf16([f"{p}.weight" for p in prefixes], out_sizes, in_size)
        if weight is None:
            full = prefaulted((sum(out_sizes), in_size))
            row = 0
            for p, o, q in zip(prefixes, out_sizes, quant, strict=True):
                if q is None:
                    self._float(f"{p}.weight", (o, in_size), out=full[row : row + o])
                else:
                    dequantize(*self._quantized_parts(p, o, in_size, *q), *q, out=full[row : row + o])
                row += o
            weight = self.ops.linear_weight(full)
            del full
        for p in prefixes:
            self._release(p)
        return weight, b

    def embedding(self, prefix: str, vocab: int, hidden: int) -> Any:
        """The token embedding table; quantized on backends that can look up quantized rows."""
        quant = self._quant_params(prefix)
        table = None
        if quant is None:
            table = self._bf16([f"{prefix}.weight"], [vocab], hidden)
        elif hasattr(self.ops, "quantized_weight"):
            table = self._packed([prefix], [vocab], hidden, *quant)
        if table is None and quant is None:
            table = self._float(f"{prefix}.weight", (vocab, hidden), out=prefaulted((vocab, hidden)))
            table = self.ops.asarray(table)
        elif table is None:
            parts = self._quantized_parts(prefix, vocab, hidden, *quant)
            table = dequantize(*parts, *quant, out=prefaulted((vocab, hidden)))
        self._release(prefix)
        return table

    def vector(self, name: str, size: int) -> Any:
        """A 1-D float tensor (norm weights) in the backend's float dtype."""
        arr = self.ops.asarray(np.array(self._float(name, (size,))))
        self.checkpoint.release(name)
        return arr


def weight_format(w: Any) -> str:
    """What a loaded weight matrix is stored as: "f32", "bf16", "f16", or "q4 g64" (4-bit, groups of 64)."""
    if hasattr(w, "bits") and hasattr(w, "group_size"):  # numpy QuantWeight, mlx QuantizedWeight
        return f"q{w.bits} g{w.group_size}"
    if hasattr(w, "bits"):  # numpy Bf16Weight: its bits are the bfloat16 values
        return "bf16"
    return {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}.get(
        str(w.dtype).split(".")[-1], str(w.dtype)
    )


def weight_bytes(w: Any) -> int:
    """Bytes a loaded weight matrix holds in memory (packed words + scales + biases when quantized)."""
    if hasattr(w, "nbytes"):
        return int(w.nbytes)
    return sum(int(getattr(w, p).nbytes) for p in ("w", "scales", "biases"))  # mlx QuantizedWeight


def weight_summary(matrices: list[Any]) -> dict[str, int]:
    """Bytes of the matrices by storage format, e.g. {"q4 g64": 351_000_000} (engine.Model.network
    .matrices())."""
    summary: dict[str, int] = {}
    for w in matrices:
        summary[weight_format(w)] = summary.get(weight_format(w), 0) + weight_bytes(w)
    return summary
