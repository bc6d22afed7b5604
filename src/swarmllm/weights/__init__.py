"""Weight loading entry point: one API over GGUF files and safetensors folders.

    config = read_config(source)
    blocks = load_blocks(source, config, start, end)   # only blocks [start, end) are read
    head = load_head(source, config)

`source` is a `swarmllm.models.catalog.ModelSource`. This package reads files only; it knows
nothing about the network or the engine.
"""

from __future__ import annotations

import torch

from swarmllm.models.catalog import ModelSource
from swarmllm.models.config import ModelConfig
from swarmllm.weights.gguf_reader import (
    gguf_block_parameter_counts,
    load_gguf_blocks,
    load_gguf_head,
    read_gguf_config,
    record_dequantized,
)
from swarmllm.weights.safetensors_reader import (
    load_safetensors_blocks,
    safetensors_block_parameter_counts,
    load_safetensors_head,
    read_safetensors_config,
)
from swarmllm.weights.types import BlockWeights, HeadWeights, Int4Codes

__all__ = [
    "BlockWeights",
    "HeadWeights",
    "block_parameter_counts",
    "Int4Codes",
    "load_blocks",
    "load_head",
    "read_config",
    "record_dequantized",
]


def _check_format(source: ModelSource) -> None:
    if source.format not in ("gguf", "safetensors"):
        raise ValueError(f"Unsupported weight format {source.format!r}; expected 'gguf' or 'safetensors'.")


def read_config(source: ModelSource) -> ModelConfig:
    _check_format(source)
    if source.format == "gguf":
        return read_gguf_config(source.path)
    return read_safetensors_config(source.path)


def load_blocks(
    source: ModelSource, config: ModelConfig, start: int, end: int, dtype: torch.dtype = torch.float32,
    keep_int4: bool = False,
) -> list[BlockWeights]:
    """Weights of blocks [start, end), in HF orientation; nothing outside the span is read.

    keep_int4: return a GGUF's 4-bit projection tensors as `Int4Codes` instead of floats
    (safetensors sources have none and always return floats).
    """
    _check_format(source)
    if source.format == "gguf":
        return load_gguf_blocks(source.path, config, start, end, dtype, keep_int4)
    return load_safetensors_blocks(source.path, config, start, end, dtype)


def load_head(source: ModelSource, config: ModelConfig, dtype: torch.dtype = torch.float32) -> HeadWeights:
    """Token embedding, final norm and LM head (the same tensor as the embedding when tied)."""
    _check_format(source)
    if source.format == "gguf":
        return load_gguf_head(source.path, config, dtype)
    return load_safetensors_head(source.path, config, dtype)


def block_parameter_counts(source: ModelSource, config: ModelConfig | None = None) -> list[int]:
    """Number of weights in each block, from the file's header only (no tensor data is read).

    A node holds its blocks dequantized in the compute dtype, so its memory for block i is
    `counts[i] * bytes per element`, whatever the file's quantization.
    """
    _check_format(source)
    config = config or read_config(source)
    if source.format == "gguf":
        return gguf_block_parameter_counts(source.path, config)
    return safetensors_block_parameter_counts(source.path, config)
