"""Read and write safetensors files with numpy only: no torch, and never pickle.

The format is an 8-byte little-endian header length, a JSON header naming every tensor's dtype,
shape and byte range, then the raw bytes. Reading it ourselves keeps the importer usable in the
torch-free install and lets us refuse bad files before any tensor is touched: the header size is
capped, every byte range is checked against the file size (a truncated download fails naming the
tensor), ranges must tile the data section exactly, and duplicate JSON keys are rejected.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointFormatError

# The safetensors library caps headers at 100 MB; a header is a few kB per thousand tensors.
MAX_HEADER_BYTES = 100 * 1024 * 1024
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
# Magic bytes of the formats people rename to .safetensors by mistake (all of them pickle-based).
_PICKLE_MAGIC = {b"PK\x03\x04": "a zip archive (torch.save)", b"\x80": "a pickle"}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def pickle_refusal(path: Path, what: str) -> CheckpointFormatError:
    return CheckpointFormatError(
        f"{path} is {what}. deco never unpickles weights: loading a pickle runs arbitrary code. Convert it once, "
        "on a machine you trust, to safetensors, e.g. python -c \"import torch; from safetensors.torch import "
        f"save_file; save_file(torch.load('{path.name}', weights_only=True), 'model.safetensors')\", then pass the "
        "folder holding model.safetensors."
    )


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {key!r}")
        seen[key] = value
    return seen


class SafetensorsFile:
    """The validated header of one safetensors file; tensors are read on demand as float32.

    >>> weights = SafetensorsFile("model.safetensors")  # doctest: +SKIP
    >>> weights.keys(), weights.read("temp_head.mlp.0.weight").shape  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.suffix in PICKLE_SUFFIXES:
            raise pickle_refusal(self.path, "a pickle-based checkpoint")
        size = self.path.stat().st_size
        with open(self.path, "rb") as handle:
            prefix = handle.read(8)
            for magic, what in _PICKLE_MAGIC.items():
                if prefix.startswith(magic):
                    raise pickle_refusal(self.path, f"{what}, not safetensors")
            if len(prefix) < 8:
                raise CheckpointFormatError(
                    f"{self.path} is {size} bytes, too short for a safetensors file (8-byte header length first): "
                    "it is truncated or empty. Download or copy it again."
                )
            (header_size,) = struct.unpack("<Q", prefix)
            if header_size > MAX_HEADER_BYTES:
                raise CheckpointFormatError(
                    f"{self.path} declares a {header_size}-byte header, over the {MAX_HEADER_BYTES}-byte cap: "
                    "it is not a safetensors file (or is corrupt)."
                )
            if 8 + header_size > size:
                raise CheckpointFormatError(
                    f"{self.path} is truncated: its header needs {8 + header_size} bytes but the file has {size}. "
                    "Download or copy it again."
                )
            raw = handle.read(header_size)
        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
        except (UnicodeDecodeError, ValueError, RecursionError) as error:  # deep nesting: RecursionError
            raise CheckpointFormatError(f"{self.path} has a malformed safetensors header ({type(error).__name__}: {error}).") from error
        if not isinstance(header, dict):
            raise CheckpointFormatError(f"{self.path}: the safetensors header must be a JSON object.")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise CheckpointFormatError(f"{self.path}: `__metadata__` must map strings to strings.")
        self.metadata: dict[str, str] = metadata
        self._data_start = 8 + header_size
        data_size = size - self._data_start
        self.entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, entry in header.items():
            self.entries[name] = self._check_entry(name, entry, data_size)
        # Byte ranges must tile the data section, as the format requires (no gaps, no overlaps).
        position = 0
        for name, (_, _, begin, end) in sorted(self.entries.items(), key=lambda item: item[1][2:]):
            if begin != position:
                raise CheckpointFormatError(
                    f"{self.path}: tensor `{name}` starts at byte {begin} of the data, expected {position} "
                    "(overlapping or gapped tensors): the file is corrupt."
                )
            position = end
        if position != data_size:
            raise CheckpointFormatError(
                f"{self.path} has {data_size - position} bytes after its last tensor: the file is corrupt or was "
                "appended to. Download or copy it again."
            )

    def _check_entry(self, name: str, entry: Any, data_size: int) -> tuple[str, tuple[int, ...], int, int]:
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointFormatError(f"{self.path}: tensor `{name}` needs exactly dtype, shape and data_offsets.")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in _ITEMSIZE:
            raise CheckpointFormatError(
                f"{self.path}: tensor `{name}` has dtype {dtype!r}; head weights must be one of {sorted(_ITEMSIZE)}."
            )
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise CheckpointFormatError(f"{self.path}: tensor `{name}` has an invalid shape {shape!r}.")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise CheckpointFormatError(f"{self.path}: tensor `{name}` has invalid data_offsets {offsets!r}.")
        begin, end = offsets
        expected = math.prod(shape) * _ITEMSIZE[dtype]  # Python ints: a hostile shape cannot overflow
        if end - begin != expected:
            raise CheckpointFormatError(
                f"{self.path}: tensor `{name}` ({dtype} {shape}) spans {end - begin} bytes, expected {expected}."
            )
        if end > data_size:
            raise CheckpointFormatError(
                f"{self.path} is truncated: tensor `{name}` ends at byte {self._data_start + end} but the file has "
                f"{self._data_start + data_size}. Download or copy it again."
            )
        return dtype, tuple(shape), begin, end

    def keys(self) -> list[str]:
        return list(self.entries)

    def dtype(self, name: str) -> str:
        return self.entries[name][0]

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name][1]

    def read(self, name: str, rows: np.ndarray | None = None) -> np.ndarray:
        """Tensor ``name`` as float32 (bf16/fp16 widened exactly); ``rows`` reads only those rows."""
        dtype, shape, begin, end = self.entries[name]
        raw_dtype = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2"}[dtype]
        if end == begin:
            array = np.zeros(shape, dtype=raw_dtype)
        else:
            array = np.memmap(self.path, dtype=raw_dtype, mode="r", offset=self._data_start + begin, shape=shape)
        if rows is not None:
            array = array[np.asarray(rows)]
        array = np.array(array)  # copy out of the memory map
        if dtype == "BF16":  # bf16 is the high half of a float32: widen by shifting
            return (array.astype(np.uint32) << 16).view(np.float32)
        return array.astype(np.float32)


def safetensors_bytes(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """A float32 safetensors file holding ``tensors``, as bytes (keys sorted, header 8-byte aligned)."""
    header: dict[str, Any] = {"__metadata__": dict(metadata or {})}
    chunks = []
    offset = 0
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name], dtype="<f4")
        data = array.tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # as the safetensors library does, so tensors stay aligned
    return struct.pack("<Q", len(encoded)) + encoded + b"".join(chunks)
