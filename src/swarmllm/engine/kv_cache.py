"""Key/value cache for a span of blocks: pre-allocated, position-addressed, rollback by truncate.

Layout: `keys` and `values` are [n_blocks, B, n_kv_heads, max_length, head_dim]; positions
[0, length) are valid. The SpanModel writes new positions and then sets `length`; `truncate(n)`
rolls back (e.g. after a rejected speculative draft) without touching memory. Pure data: no
I/O, no knowledge of which absolute blocks it serves.
"""

from __future__ import annotations

import torch

from swarmllm.models.config import ModelConfig


def kv_bytes_per_token(config: ModelConfig, n_blocks: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of K and V one position costs across `n_blocks` blocks (batch size 1)."""
    element = torch.empty(0, dtype=dtype).element_size()
    return 2 * n_blocks * config.n_kv_heads * config.head_dim * element


class KVCache:
    """Cache for `n_blocks` consecutive blocks and up to `max_length` positions."""

    def __init__(
        self,
        config: ModelConfig,
        n_blocks: int,
        max_length: int,
        batch_size: int = 1,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if max_length <= 0:
            raise ValueError(f"KVCache max_length must be positive, got {max_length}.")
        shape = (n_blocks, batch_size, config.n_kv_heads, max_length, config.head_dim)
        self.keys = torch.zeros(shape, dtype=dtype)
        self.values = torch.zeros(shape, dtype=dtype)
        self.max_length = max_length
        self.batch_size = batch_size
        self.length = 0

    @property
    def n_blocks(self) -> int:
        return self.keys.shape[0]

    @property
    def nbytes(self) -> int:
        return 2 * self.keys.numel() * self.keys.element_size()

    def truncate(self, length: int) -> None:
        """Forget positions >= length (rollback). Growing is not allowed."""
        if not 0 <= length <= self.length:
            raise ValueError(f"Cannot truncate a KV cache of length {self.length} to {length}.")
        self.length = length

    def reset(self) -> None:
        self.length = 0

    def check_write(self, start_position: int, n_new: int) -> None:
        """Raise a clear error unless positions [start_position, start_position + n_new) can be written."""
        if start_position > self.length:
            raise ValueError(
                f"Position {start_position} would leave a gap: the cache holds only {self.length} positions."
            )
        if start_position + n_new > self.max_length:
            raise ValueError(
                f"The sequence would reach {start_position + n_new} tokens, but this KV cache holds at most "
                f"{self.max_length}; start a new session or allocate a larger cache."
            )
