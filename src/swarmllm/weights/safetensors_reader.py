"""Safetensors reader for Hugging Face model folders (config.json + *.safetensors).

Contract: `load_safetensors_blocks` opens only the tensors of blocks [start, end) (safetensors
reads lazily per tensor, so other blocks are never materialized); names are mapped through the
family's `hf_block_names` (fused qkv / gate_up tensors are split into their parts). RMSNorm weights are returned as final multipliers (the family's
`hf_norm_offset` is added, e.g. Gemma's 1 + w). Sharded folders are supported through
`model.safetensors.index.json`.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
from safetensors import safe_open

from swarmllm.models.config import ModelConfig
from swarmllm.models.registry import (
    FUSED_ROLES,
    NORM_ROLES,
    REQUIRED_ROLES,
    FamilySpec,
    config_from_hf,
    get_family,
)
from swarmllm.weights.types import BlockWeights, HeadWeights, split_fused

_FUSED_OF = {part: fused for fused, parts in FUSED_ROLES.items() for part in parts}

# Multimodal checkpoints nest the text model one level deeper.
_PREFIX_ALIASES = (("model.", "model.language_model."), ("lm_head.", "language_model.lm_head."))


def read_hf_config_dict(folder: str) -> dict:
    with open(Path(folder) / "config.json", encoding="utf-8") as f:
        return json.load(f)


def read_safetensors_config(folder: str) -> ModelConfig:
    return config_from_hf(read_hf_config_dict(folder))


@functools.lru_cache(maxsize=8)
def _tensor_files(folder: str) -> dict[str, str]:
    """Tensor name -> file that holds it."""
    root = Path(folder)
    index = root / "model.safetensors.index.json"
    if index.is_file():
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        return {name: str(root / file) for name, file in weight_map.items()}
    files: dict[str, str] = {}
    for file in sorted(root.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            files.update({name: str(file) for name in handle.keys()})
    if not files:
        raise ValueError(f"No *.safetensors files found in {folder}.")
    return files


def _find(folder: str, name: str) -> str | None:
    files = _tensor_files(folder)
    if name in files:
        return name
    for plain, nested in _PREFIX_ALIASES:
        if name.startswith(plain) and nested + name[len(plain):] in files:
            return nested + name[len(plain):]
    return None


def _read(folder: str, name: str, dtype: torch.dtype) -> torch.Tensor:
    stored = _find(folder, name)
    if stored is None:
        raise ValueError(f"The checkpoint in {folder} has no tensor {name!r}; it is incomplete or not a supported model.")
    with safe_open(_tensor_files(folder)[stored], framework="pt") as handle:
        return handle.get_tensor(stored).to(dtype)


def _block(folder: str, spec: FamilySpec, config: ModelConfig, index: int, dtype: torch.dtype) -> BlockWeights:
    tensors: dict[str, torch.Tensor] = {}
    names = spec.block_tensor_names("hf", index)
    for role, name in names.items():
        if _find(folder, name) is None:
            continue  # optional or the other half of a fused/unfused pair; checked below
        weight = _read(folder, name, torch.float32)
        if role in NORM_ROLES and spec.hf_norm_offset:
            weight = weight + spec.hf_norm_offset
        tensors[role] = weight
    tensors = split_fused(tensors, config.q_size, config.kv_size)
    missing = [role for role in REQUIRED_ROLES if role not in tensors]
    if missing:
        expected = ", ".join(names.get(role) or names.get(_FUSED_OF.get(role, ""), role) for role in missing)
        raise ValueError(f"The checkpoint in {folder} lacks block {index} tensors ({expected}); "
                         f"it is incomplete or not a {spec.name} model.")
    return BlockWeights(index=index, **{role: t.to(dtype) for role, t in tensors.items()})


def load_safetensors_blocks(
    folder: str, config: ModelConfig, start: int, end: int, dtype: torch.dtype = torch.float32
) -> list[BlockWeights]:
    config.check_span(start, end)
    spec = get_family(config.family)
    return [_block(folder, spec, config, i, dtype) for i in range(start, end)]


def load_safetensors_head(folder: str, config: ModelConfig, dtype: torch.dtype = torch.float32) -> HeadWeights:
    spec = get_family(config.family)
    names = spec.hf_head_names
    embed = _read(folder, names["embed"], dtype)
    final_norm = _read(folder, names["final_norm"], torch.float32) + spec.hf_norm_offset
    tied = config.tie_embeddings or _find(folder, names["lm_head"]) is None
    lm_head = embed if tied else _read(folder, names["lm_head"], dtype)
    return HeadWeights(embed=embed, final_norm=final_norm.to(dtype), lm_head=lm_head)


def safetensors_block_parameter_counts(folder: str, config: ModelConfig) -> list[int]:
    """Weights per block, from the files' headers (safetensors reads no tensor data for shapes)."""
    spec = get_family(config.family)
    files = _tensor_files(folder)
    wanted: dict[str, list[tuple[int, str]]] = {}  # file -> (block, stored name); each file opened once
    for index in range(config.n_blocks):
        for name in spec.block_tensor_names("hf", index).values():
            stored = _find(folder, name)
            if stored is not None:
                wanted.setdefault(files[stored], []).append((index, stored))
    counts = [0] * config.n_blocks
    for file, entries in wanted.items():
        with safe_open(file, framework="pt") as handle:
            for index, stored in entries:
                count = 1
                for size in handle.get_slice(stored).get_shape():
                    count *= int(size)
                counts[index] += count
    return counts
