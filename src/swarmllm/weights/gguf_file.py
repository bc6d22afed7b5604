"""Minimal, fast GGUF container parser (header, metadata, tensor index) over a memory map.

Why not `gguf.GGUFReader`: it builds Python objects for every element of every metadata
array at open time, which takes ~9 s for Gemma's 262k-token vocabulary. This parser walks the
header once (strings decoded, numeric arrays as NumPy views) and exposes raw tensor bytes as
memory-mapped uint8 arrays; dequantization stays with `gguf.quants.dequantize`.

Format reference: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

_SCALARS = {  # GGUF value type -> (struct format, size)
    0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4),
    6: ("<f", 4), 7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8),
}
_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32,
          6: np.float32, 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
_STRING, _ARRAY = 8, 9


class TruncatedHeaderError(ValueError):
    """The bytes given end inside the GGUF header (read more of the file and try again)."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # GGML order: shape[0] is the contiguous (input) dimension
    type: int  # gguf.GGMLQuantizationType value
    offset: int  # absolute byte offset in the file
    n_bytes: int

    @property
    def hf_shape(self) -> tuple[int, ...]:
        """Shape in PyTorch / HF orientation ([out, in])."""
        return tuple(reversed(self.shape))


class GGUFFile:
    """Parsed GGUF header. `metadata` maps keys to Python values (arrays: list or ndarray).

    With `data` (the first bytes of a file), only the header is parsed from it, bounds-checked:
    `TruncatedHeaderError` if the header goes on past them. `header_end` is where the header
    ends and `data_start` where tensor data begins (after alignment padding).
    """

    def __init__(self, path: str, data: bytes | None = None) -> None:
        self.path = path
        self._map = np.memmap(path, dtype=np.uint8, mode="r") if data is None else np.frombuffer(data, dtype=np.uint8)
        try:
            self._parse(memoryview(self._map))
        except struct.error:
            raise TruncatedHeaderError(f"{path}: the GGUF header goes past the {len(self._map)} bytes read") from None
        finally:
            self._buf = None  # drop the memoryview so the map can be closed with the object

    def _parse(self, buf: memoryview) -> None:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        path = self.path
        if bytes(buf[:4]) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file (bad magic bytes).")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
        if version < 2:
            raise ValueError(f"{path} uses GGUF version {version}; only versions 2 and 3 are supported.")
        self._buf, pos = buf, 24
        self.metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key, pos = self._string(pos)
            (value_type,), pos = struct.unpack_from("<I", buf, pos), pos + 4
            self.metadata[key], pos = self._value(value_type, pos)
        infos = []
        for _ in range(n_tensors):
            name, pos = self._string(pos)
            (n_dims,), pos = struct.unpack_from("<I", buf, pos), pos + 4
            shape = struct.unpack_from(f"<{n_dims}Q", buf, pos)
            pos += 8 * n_dims
            tensor_type, offset = struct.unpack_from("<IQ", buf, pos)
            pos += 12
            infos.append((name, tuple(int(d) for d in shape), int(tensor_type), int(offset)))
        alignment = int(self.metadata.get("general.alignment", 32))
        data_start = (pos + alignment - 1) // alignment * alignment
        self.header_end, self.data_start = pos, data_start
        self.tensors: dict[str, TensorInfo] = {}
        for name, shape, tensor_type, offset in infos:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(tensor_type)]
            n_bytes = int(np.prod(shape)) // block * type_size
            self.tensors[name] = TensorInfo(name, shape, tensor_type, data_start + offset, n_bytes)

    def _string(self, pos: int) -> tuple[str, int]:
        (length,) = struct.unpack_from("<Q", self._buf, pos)
        pos += 8
        if pos + length > len(self._buf):
            raise struct.error("string past the end")
        return bytes(self._buf[pos:pos + length]).decode("utf-8", errors="replace"), pos + length

    def _value(self, value_type: int, pos: int) -> tuple[Any, int]:
        if value_type == _STRING:
            return self._string(pos)
        if value_type in _SCALARS:
            fmt, size = _SCALARS[value_type]
            return struct.unpack_from(fmt, self._buf, pos)[0], pos + size
        if value_type != _ARRAY:
            raise ValueError(f"{self.path}: unknown GGUF metadata value type {value_type}.")
        item_type, count = struct.unpack_from("<IQ", self._buf, pos)
        pos += 12
        if item_type in _NUMPY:
            dtype = np.dtype(_NUMPY[item_type])
            if pos + count * dtype.itemsize > len(self._buf):
                raise struct.error("array past the end")
            array = np.frombuffer(self._map, dtype=dtype, count=count, offset=pos)
            return array, pos + count * dtype.itemsize
        items = []
        for _ in range(count):
            item, pos = self._value(item_type, pos)
            items.append(item)
        return items, pos

    def raw(self, name: str) -> np.ndarray:
        """Read-only uint8 view of a tensor's bytes, shaped [rows, row_bytes] for dequantize()."""
        info = self.tensors[name]
        rows = int(np.prod(info.shape[1:])) if len(info.shape) > 1 else 1
        data = self._map[info.offset:info.offset + info.n_bytes]
        return data.reshape(rows, info.n_bytes // rows)
