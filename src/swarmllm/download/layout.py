"""Where a model file keeps each tensor: byte ranges from the header alone (pure, no I/O).

`gguf_layout(prefix, size)` and `safetensors_layout(prefix, size)` parse the first bytes of a
file (raising `TruncatedHeaderError` when the header goes on past them, so the caller reads
more) and check the header against the file's size: every tensor must lie inside the data
region and no two may overlap. `span_tensors` names what a node serving blocks [start, end)
reads: the blocks' tensors (GGUF `blk.{i}.*`, safetensors `*layers.{i}.*`), what reading
the config needs (`rope_freqs.weight`), and the head's tensors when asked.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass

from swarmllm.weights.gguf_file import GGUFFile, TruncatedHeaderError

__all__ = ["FileLayout", "TruncatedHeaderError", "gguf_layout", "safetensors_layout", "span_tensors"]

_HEAD_NAMES = {  # the head tensors of every supported family (see models/registry.py)
    "gguf": ("token_embd.weight", "output_norm.weight", "output.weight"),
    "safetensors": ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
                    "model.language_model.embed_tokens.weight", "model.language_model.norm.weight",
                    "language_model.lm_head.weight"),
}


@dataclass(frozen=True)
class FileLayout:
    format: str                          # "gguf" or "safetensors"
    header_end: int                      # the header is bytes [0, header_end)
    tensors: dict[str, tuple[int, int]]  # name -> absolute [start, end) in the file


def _check(layout: FileLayout, data_start: int, size: int, what: str) -> FileLayout:
    spans = sorted(layout.tensors.items(), key=lambda item: item[1])
    for name, (start, end) in spans:
        if not data_start <= start <= end <= size:
            raise ValueError(f"{what}: tensor {name!r} at bytes [{start}, {end}) lies outside the data region "
                             f"[{data_start}, {size}): the header does not match the file")
    for (name_a, (_, end_a)), (name_b, (start_b, _)) in zip(spans, spans[1:]):
        if start_b < end_a:
            raise ValueError(f"{what}: tensors {name_a!r} and {name_b!r} overlap: the header is corrupt")
    return layout


def gguf_layout(prefix: bytes, size: int, what: str = "model file") -> FileLayout:
    header = GGUFFile(what, data=prefix)
    tensors = {name: (info.offset, info.offset + info.n_bytes) for name, info in header.tensors.items()}
    return _check(FileLayout("gguf", header.data_start, tensors), header.data_start, size, what)


def safetensors_layout(prefix: bytes, size: int, what: str = "model file") -> FileLayout:
    if len(prefix) < 8:
        raise TruncatedHeaderError(f"{what}: need 8 bytes for the header length")
    (length,) = struct.unpack_from("<Q", prefix)
    if length > 100 * 2**20 or 8 + length > size:
        raise ValueError(f"{what}: header length {length} is not plausible for a file of {size} bytes")
    if len(prefix) < 8 + length:
        raise TruncatedHeaderError(f"{what}: the header goes past the {len(prefix)} bytes read")
    try:
        entries = json.loads(prefix[8:8 + length])
    except ValueError as e:
        raise ValueError(f"{what}: the safetensors header is not valid JSON ({e})") from None
    data_start = 8 + length
    tensors = {}
    for name, entry in entries.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        tensors[name] = (data_start + int(begin), data_start + int(end))
    return _check(FileLayout("safetensors", data_start, tensors), data_start, size, what)


def span_tensors(layout: FileLayout, start: int, end: int, head: bool = False) -> list[str]:
    """Tensors a node serving blocks [start, end) reads (plus the head's, for a client)."""
    if layout.format == "gguf":
        pattern = re.compile(r"^blk\.(\d+)\.")
        extra = {"rope_freqs.weight"}
    else:
        pattern = re.compile(r"(?:^|\.)layers\.(\d+)\.")
        extra = set()
    if head:
        extra |= set(_HEAD_NAMES[layout.format])
    names = []
    for name in layout.tensors:
        match = pattern.search(name)
        if (match and start <= int(match.group(1)) < end) or name in extra:
            names.append(name)
    return names
