"""GGUF reader: config, metadata arrays and per-span tensors from one memory-mapped file.

Contract:
- `load_gguf_blocks(path, config, start, end)` dequantizes ONLY tensors of blocks [start, end);
  `load_gguf_head` only the embedding, final norm and LM head. Every dequantized tensor name
  is reported to observers registered with `record_dequantized()` so tests can prove it.
- Tensors come back in HF orientation ([out, in]); llama.cpp's q/k row permutation is undone
  for families whose `FamilySpec.gguf_permuted_qk` is set; fused tensors (Phi-3's attn_qkv and
  gate|up ffn_up) are split into their parts.
- With `keep_int4=True`, projection tensors stored as Q4_0 / Q4_1 / Q4_K come back as
  `Int4Codes` (their 4-bit codes, re-packed without a float round trip, see gguf_int4.py);
  every other tensor (fused ones included) is dequantized as usual.
- Supports every type `gguf.quants.dequantize` supports (F32, F16, BF16, Q4_0, Q4_1, Q5_0,
  Q8_0, Q4_K, Q5_K, Q6_K, ...).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Iterator

import numpy as np
import torch

from swarmllm.models.config import ModelConfig
from swarmllm.models.registry import (
    FUSED_ROLES,
    REQUIRED_ROLES,
    FamilySpec,
    config_from_gguf,
    family_for_gguf,
    get_family,
)
from swarmllm.weights.gguf_file import GGUFFile
from swarmllm.weights.gguf_int4 import int4_codes
from swarmllm.weights.types import BlockWeights, HeadWeights, Int4Codes, Weight, split_fused

_observers: list[list[str]] = []


@contextlib.contextmanager
def record_dequantized() -> Iterator[list[str]]:
    """Collect the names of all GGUF tensors dequantized inside the `with` block."""
    names: list[str] = []
    _observers.append(names)
    try:
        yield names
    finally:
        _observers.remove(names)


@functools.lru_cache(maxsize=8)
def open_gguf(path: str) -> GGUFFile:
    """The parsed header of a GGUF file (cached per path; tensor data stays memory-mapped)."""
    return GGUFFile(path)


def read_gguf_metadata(path: str) -> dict[str, Any]:
    """All metadata as Python values; arrays are lists (strings) or NumPy arrays (numbers)."""
    return open_gguf(path).metadata


def _dequantize(path: str, name: str) -> np.ndarray:
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize

    file = open_gguf(path)
    info = file.tensors.get(name)
    if info is None:
        raise ValueError(f"The GGUF file {path} has no tensor {name!r}; the file is incomplete or not a supported model.")
    for names in _observers:
        names.append(name)
    array = dequantize(file.raw(name), GGMLQuantizationType(info.type))
    array = np.ascontiguousarray(array, dtype=np.float32).reshape(info.hf_shape)
    # F32 tensors come back as read-only views of the memory map; own the data.
    return array if array.flags.writeable else array.copy()


def _to_torch(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    tensor = torch.from_numpy(array)
    return tensor.to(dtype) if dtype != torch.float32 else tensor


def _unpermute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's rotary row permutation: [H, hd/2, 2, in] -> [H, 2, hd/2, in] (a bias: in = 1)."""
    rows = w.shape[0]
    cols = w.shape[1] if w.dim() == 2 else 1
    out = w.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)
    return out.reshape(w.shape).contiguous()


def _codes(path: str, name: str) -> Int4Codes | None:
    info = open_gguf(path).tensors.get(name)
    if info is None:
        return None
    codes = int4_codes(open_gguf(path).raw(name), info.type, info.hf_shape)
    if codes is not None:
        for names in _observers:
            names.append(name)
    return codes


def _unpermute_weight(w: Weight, n_heads: int) -> Weight:
    if isinstance(w, torch.Tensor):
        return _unpermute(w, n_heads)
    rows = w.codes.shape[0]
    return w.rows(_unpermute(torch.arange(rows)[:, None], n_heads)[:, 0])


def read_gguf_config(path: str) -> ModelConfig:
    metadata = read_gguf_metadata(path)
    spec = family_for_gguf(str(metadata["general.architecture"]))
    shapes = {name: info.hf_shape for name, info in open_gguf(path).tensors.items()}
    extra_eos: tuple[int, ...] = ()
    if spec.extra_eos_tokens:
        tokens = metadata.get("tokenizer.ggml.tokens", [])
        index = {token: i for i, token in enumerate(tokens) if token in spec.extra_eos_tokens}
        extra_eos = tuple(index[t] for t in spec.extra_eos_tokens if t in index)
    freq_factors = None
    if "rope_freqs.weight" in shapes:
        freq_factors = tuple(float(x) for x in _dequantize(path, "rope_freqs.weight").reshape(-1))
    return config_from_gguf(metadata, shapes, extra_eos, freq_factors)


_PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")


def _block(path: str, spec: FamilySpec, config: ModelConfig, index: int, dtype: torch.dtype,
           keep_int4: bool) -> BlockWeights:
    tensors: dict[str, Weight] = {}
    available = open_gguf(path).tensors
    names = spec.block_tensor_names("gguf", index)
    for role, name in names.items():
        if name not in available:
            continue  # optional or the other half of a fused/unfused pair; checked below
        if role in FUSED_ROLES and all(names.get(part) in available for part in FUSED_ROLES[role]):
            continue  # both layouts present: read the parts
        weight = _codes(path, name) if keep_int4 and role in _PROJECTIONS else None
        tensors[role] = weight if weight is not None else _to_torch(_dequantize(path, name), dtype)
    tensors = split_fused(tensors, config.q_size, config.kv_size)
    missing = [role for role in REQUIRED_ROLES if role not in tensors]
    if missing:
        raise ValueError(f"The GGUF file {path} lacks block {index} tensors for {', '.join(missing)}; "
                         f"it is incomplete or not a {spec.name} model.")
    if spec.gguf_permuted_qk:
        for role, heads in (("q", config.n_heads), ("k", config.n_kv_heads),
                            ("q_bias", config.n_heads), ("k_bias", config.n_kv_heads)):
            if role in tensors:
                tensors[role] = _unpermute_weight(tensors[role], heads)
    return BlockWeights(index=index, **tensors)


def load_gguf_blocks(
    path: str, config: ModelConfig, start: int, end: int, dtype: torch.dtype = torch.float32, keep_int4: bool = False
) -> list[BlockWeights]:
    config.check_span(start, end)
    spec = get_family(config.family)
    return [_block(path, spec, config, i, dtype, keep_int4) for i in range(start, end)]


def load_gguf_head(path: str, config: ModelConfig, dtype: torch.dtype = torch.float32) -> HeadWeights:
    names = get_family(config.family).gguf_head_names
    embed = _to_torch(_dequantize(path, names["embed"]), dtype)
    final_norm = _to_torch(_dequantize(path, names["final_norm"]), dtype)
    lm_head = embed if config.tie_embeddings else _to_torch(_dequantize(path, names["lm_head"]), dtype)
    return HeadWeights(embed=embed, final_norm=final_norm, lm_head=lm_head)


def gguf_block_parameter_counts(path: str, config: ModelConfig) -> list[int]:
    """Weights per block, counted from the header's tensor shapes (nothing is dequantized)."""
    spec = get_family(config.family)
    available = open_gguf(path).tensors
    counts = []
    for index in range(config.n_blocks):
        names = [n for n in spec.block_tensor_names("gguf", index).values() if n in available]
        counts.append(sum(int(np.prod(available[n].shape)) for n in names))
    return counts
