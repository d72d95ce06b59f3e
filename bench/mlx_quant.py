"""An MLX-quantized copy of a checkpoint, as mlx-lm writes one: every 2-D weight through mx.quantize
(affine, uint32-packed, scales and biases in the source's dtype), config.json given `quantization`.

    python -m bench.mlx_quant SRC DST --bits 4 --group-size 64
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from engine.safetensors_io import Checkpoint


def write_quantized(src: Path, dst: Path, bits: int, group_size: int) -> int:
    """Quantize the checkpoint at `src` into `dst`; returns the bytes of its tensors."""
    import mlx.core as mx

    checkpoint = Checkpoint(src)
    tensors: dict[str, tuple[str, np.ndarray]] = {}  # name -> (safetensors dtype, raw values)
    try:
        for name in checkpoint.names():
            info = checkpoint.info(name)
            raw = np.array(checkpoint.raw(name))
            if len(info.shape) != 2 or not name.endswith(".weight"):
                tensors[name] = (info.dtype, raw)
                continue
            values = mx.array(checkpoint.float32(name))
            wq, scales, biases = mx.quantize(values, group_size=group_size, bits=bits)
            prefix = name[: -len(".weight")]
            tensors[name] = ("U32", np.array(wq))
            for part, array in (("scales", scales), ("biases", biases)):
                tensors[f"{prefix}.{part}"] = _as_stored(array, info.dtype)
    finally:
        checkpoint.close()
    dst.mkdir(parents=True, exist_ok=True)
    size = _write_safetensors(dst / "model.safetensors", tensors)
    config = json.loads((src / "config.json").read_text())
    config["quantization"] = {"group_size": group_size, "bits": bits}
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return size


def _as_stored(array: object, dtype: str) -> tuple[str, np.ndarray]:
    """Scales or biases in the source weight's 16-bit dtype (bfloat16 as its uint16 bits)."""
    import mlx.core as mx

    if dtype == "BF16":
        return "BF16", np.array(array.astype(mx.bfloat16).view(mx.uint16))  # type: ignore[attr-defined]
    return "F16", np.array(array.astype(mx.float16))  # type: ignore[attr-defined]


def _write_safetensors(path: Path, tensors: dict[str, tuple[str, np.ndarray]]) -> int:
    header, offset = {}, 0
    for name, (dtype, raw) in tensors.items():
        header[name] = {
            "dtype": dtype,
            "shape": list(raw.shape),
            "data_offsets": [offset, offset + raw.nbytes],
        }
        offset += raw.nbytes
    header_bytes = json.dumps(header).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    with path.open("wb") as fh:
        fh.write(len(header_bytes).to_bytes(8, "little"))
        fh.write(header_bytes)
        for _, raw in tensors.values():
            np.ascontiguousarray(raw).tofile(fh)
    return offset


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--bits", type=int, default=4, choices=[4, 8])
    parser.add_argument("--group-size", type=int, default=64, choices=[32, 64, 128])
    args = parser.parse_args()
    size = write_quantized(args.src, args.dst, args.bits, args.group_size)
    print(f"{size / 1e9:.2f} GB written to {args.dst}")


if __name__ == "__main__":
    main()
