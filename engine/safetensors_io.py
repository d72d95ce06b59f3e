"""Memory-mapped safetensors reading, single file or sharded, with errors that name the file and tensor.

We parse the format ourselves (8-byte header length, JSON header, raw data) because numpy has no
bfloat16 and because we want to drop each tensor's pages from the process once it has been converted
(`release`), which keeps peak memory while loading close to the size of the final weights.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import ModelFormatError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

# safetensors dtype -> numpy storage dtype (bfloat16 is stored as uint16 and widened in to_float32).
_STORAGE = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U64": np.uint64,
    "U32": np.uint32,
    "U16": np.uint16,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_PAGE = mmap.PAGESIZE


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int


class SafetensorsFile:
    """One .safetensors file: header parsed and checked against the file size at open."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.is_file():
            raise ModelFormatError(f"{path}: safetensors file is missing")
        self.size = path.stat().st_size
        with path.open("rb") as fh:
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise ModelFormatError(f"{path}: truncated safetensors file ({self.size} bytes, no header)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > self.size - 8:
                raise ModelFormatError(
                    f"{path}: truncated safetensors file: header of {header_len} bytes, file has {self.size}"
                )
            self.header_bytes = fh.read(header_len)
        try:
            header = json.loads(self.header_bytes)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFormatError(f"{path}: unreadable safetensors header: {exc}") from exc
        data_start = 8 + header_len
        self.tensors: dict[str, TensorInfo] = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            self.tensors[name] = info = self._check_entry(name, entry, data_start)
            if info.end > self.size:
                raise ModelFormatError(
                    f"{path}: truncated safetensors file: tensor {name!r} needs bytes up to {info.end}, "
                    f"file has {self.size}"
                )
        self._map: mmap.mmap | None = None

    def _check_entry(self, name: str, entry: dict, data_start: int) -> TensorInfo:
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFormatError(f"{self.path}: malformed header entry for tensor {name!r}") from exc
        if dtype not in _STORAGE:
            raise ModelFormatError(f"{self.path}: tensor {name!r} has unsupported dtype {dtype}")
        expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(_STORAGE[dtype]).itemsize
        if end - begin != expected:
            raise ModelFormatError(
                f"{self.path}: tensor {name!r} spans {end - begin} bytes, "
                f"its shape {list(shape)} needs {expected}"
            )
        return TensorInfo(name, dtype, shape, data_start + begin, data_start + end)

    def _mapped(self) -> mmap.mmap:
        if self._map is None:
            with self.path.open("rb") as fh:
                self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        return self._map

    def raw(self, name: str) -> np.ndarray:
        """A read-only view of the tensor's bytes in its storage dtype (no copy)."""
        info = self.tensors[name]
        count = int(np.prod(info.shape, dtype=np.int64))
        arr = np.frombuffer(self._mapped(), dtype=_STORAGE[info.dtype], count=count, offset=info.start)
        return arr.reshape(info.shape)

    def release(self, name: str) -> None:
        """Drop the tensor's pages from this process (they stay in the OS page cache)."""
        if self._map is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        info = self.tensors[name]
        start = info.start // _PAGE * _PAGE
        if info.end > start:
            self._map.madvise(mmap.MADV_DONTNEED, start, info.end - start)

    def close(self) -> None:
        if self._map is not None:
            # BufferError: a view is still alive somewhere; the map closes when it is collected.
            with contextlib.suppress(BufferError):
                self._map.close()
            self._map = None


class Checkpoint:
    """All tensors of a model directory: model.safetensors, or the shards an index names."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        index_path = directory / INDEX_FILE
        if index_path.is_file():
            try:
                weight_map = json.loads(index_path.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ModelFormatError(f"{index_path}: not a valid safetensors index ({exc})") from exc
            shard_names = sorted(set(weight_map.values()))
        elif (directory / SINGLE_FILE).is_file():
            weight_map = None
            shard_names = [SINGLE_FILE]
        else:
            raise ModelFormatError(f"{directory}: no {SINGLE_FILE} or {INDEX_FILE}")
        self.files = [SafetensorsFile(directory / shard) for shard in shard_names]
        self._where: dict[str, SafetensorsFile] = {}
        for file in self.files:
            for name in file.tensors:
                self._where[name] = file
        if weight_map is not None:
            for name, shard in weight_map.items():
                if name not in self._where:
                    raise ModelFormatError(
                        f"{directory / shard}: tensor {name!r} listed in {INDEX_FILE} is not in that file"
                    )

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def names(self) -> list[str]:
        return list(self._where)

    def info(self, name: str) -> TensorInfo:
        return self._where[name].tensors[name]

    def file_of(self, name: str) -> Path:
        return self._where[name].path

    def raw(self, name: str) -> np.ndarray:
        if name not in self._where:
            where = ", ".join(str(f.path.name) for f in self.files)
            raise ModelFormatError(f"{self.directory}: tensor {name!r} is missing (looked in {where})")
        return self._where[name].raw(name)

    def float32(self, name: str, out: np.ndarray | None = None) -> np.ndarray:
        """The tensor as float32: written into `out` if given, else a view for F32 data and a new array
        for F16/BF16."""
        return to_float32(self.raw(name), self.info(name).dtype, out)

    def release(self, name: str) -> None:
        self._where[name].release(name)

    def close(self) -> None:
        for file in self.files:
            file.close()


def to_float32(raw: np.ndarray, dtype: str, out: np.ndarray | None = None) -> np.ndarray:
    """raw storage -> float32, in one pass; into `out` (same shape) when given."""
    if out is None:
        if dtype == "F32":
            return raw
        out = np.empty(raw.shape, dtype=np.float32)
    if dtype == "BF16":  # bfloat16 is the top half of a float32
        np.left_shift(raw, 16, out=out.view(np.uint32), dtype=np.uint32)
    else:
        np.copyto(out, raw, casting="unsafe" if dtype == "F64" else "same_kind")
    return out
