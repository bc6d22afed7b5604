"""GGUF reader: config, metadata arrays and per-span tensors from one memory-mapped file.

Contract:
- `load_gguf_blocks(path, config, start, end)` dequantizes ONLY tensors of blocks [start, end);
  `load_gguf_head` only the embedding, final norm and LM head. Every dequantized tensor name
  is reported to observers registered with `record_dequantized()` so tests can prove it.
- Tensors come back in HF orientation ([out, in]); llama.cpp's q/k row permutation is undone
  for families whose `FamilySpec.gguf_permuted_qk` is set.
- With `keep_int4=True`, projection tensors stored as Q4_0 / Q4_1 / Q4_K come back as
  `Int4Codes` (their 4-bit codes, re-packed without a float round trip, see gguf_int4.py);
  every other tensor is dequantized as usual.
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
from swarmllm.models.registry import FamilySpec, config_from_gguf, family_for_gguf, get_family
from swarmllm.weights.gguf_file import GGUFFile
from swarmllm.weights.gguf_int4 import int4_codes
from swarmllm.weights.types import BlockWeights, HeadWeights, Int4Codes, Weight

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
    """Undo llama.cpp's rotary row permutation: [H, hd/2, 2, in] -> [H, 2, hd/2, in]."""
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


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
    for role, name in spec.block_tensor_names("gguf", index).items():
        if name not in available and role in ("q_norm", "k_norm", "post_attn_norm", "post_ffn_norm"):
            continue
        weight = _codes(path, name) if keep_int4 and role in _PROJECTIONS else None
        if weight is None:
            weight = _to_torch(_dequantize(path, name), dtype)
        if spec.gguf_permuted_qk and role in ("q", "k"):
            weight = _unpermute_weight(weight, config.n_heads if role == "q" else config.n_kv_heads)
        tensors[role] = weight
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
