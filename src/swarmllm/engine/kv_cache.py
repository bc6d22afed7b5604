"""Key/value cache for a span of blocks: pre-allocated, position-addressed, rollback by truncate.

Layout: `keys` and `values` are [n_blocks, B, n_kv_heads, max_length, head_dim]; positions
[0, length) are valid. The SpanModel writes new positions with `write` and reads the visible
ones with `read`, then sets `length`; `truncate(n)` rolls back (e.g. after a rejected
speculative draft) without touching memory. Pure data: no I/O, no knowledge of which
absolute blocks it serves.

`Int8KVCache` stores K and V as int8 with one fp32 absmax scale per (position, head), about
half the bytes of bf16 and a quarter of fp32, so a node's memory holds that many more
sessions. It quantizes on write and dequantizes the visible range on every read: the price
is that extra work per step (it grows with the context) and a small rounding error.
"""

from __future__ import annotations

import torch

from swarmllm.models.config import ModelConfig

KV_DTYPES = ("auto", "int8")  # auto: the compute dtype; int8: Int8KVCache
_SCALE_BYTES = 4              # one fp32 scale per (position, head) in int8 caches


def kv_bytes_per_token(config: ModelConfig, n_blocks: int, dtype: torch.dtype = torch.float32,
                       kv_dtype: str = "auto") -> int:
    """Bytes of K and V one position costs across `n_blocks` blocks (batch size 1)."""
    if kv_dtype == "int8":
        per_head = config.head_dim + _SCALE_BYTES
    elif kv_dtype == "auto":
        per_head = config.head_dim * torch.empty(0, dtype=dtype).element_size()
    else:
        raise ValueError(f"unknown KV-cache dtype {kv_dtype!r}; use one of {', '.join(KV_DTYPES)}")
    return 2 * n_blocks * config.n_kv_heads * per_head


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
        self.keys = torch.zeros(shape, dtype=self._storage_dtype(dtype))
        self.values = torch.zeros(shape, dtype=self._storage_dtype(dtype))
        self.dtype = dtype  # what `read` returns
        self.max_length = max_length
        self.batch_size = batch_size
        self.length = 0
        # Per-block views of batch row 0 ([KV, max_length, hd]): `write_rows` indexes once, not per call.
        self._row_keys, self._row_values = list(self.keys[:, 0]), list(self.values[:, 0])

    @staticmethod
    def _storage_dtype(dtype: torch.dtype) -> torch.dtype:
        return dtype

    @property
    def n_blocks(self) -> int:
        return self.keys.shape[0]

    @property
    def nbytes(self) -> int:
        return 2 * self.keys.numel() * self.keys.element_size()

    def write(self, block: int, start: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store K and V [B, KV, T, hd] of block `block` (index within the span) at positions start..start+T."""
        end = start + keys.shape[2]
        self.keys[block, :, :, start:end] = keys
        self.values[block, :, :, start:end] = values

    def write_rows(self, block: int, start: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """`write` for batch row 0, from K and V [T, KV, hd] (the engine's layout; fewer ops per call)."""
        T = keys.shape[0]
        self._row_keys[block].narrow(1, start, T).copy_(keys.transpose(0, 1))
        self._row_values[block].narrow(1, start, T).copy_(values.transpose(0, 1))

    def read(self, block: int, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V [B, KV, end - start, hd] of positions [start, end), in the compute dtype (views, no copy)."""
        return self.keys[block, :, :, start:end], self.values[block, :, :, start:end]

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


class Int8KVCache(KVCache):
    """KVCache storing int8 values with one fp32 scale per (block, batch, head, position)."""

    def __init__(self, config: ModelConfig, n_blocks: int, max_length: int, batch_size: int = 1,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__(config, n_blocks, max_length, batch_size, dtype)
        scale_shape = (n_blocks, batch_size, config.n_kv_heads, max_length, 1)
        self.key_scales = torch.zeros(scale_shape, dtype=torch.float32)
        self.value_scales = torch.zeros(scale_shape, dtype=torch.float32)

    @staticmethod
    def _storage_dtype(dtype: torch.dtype) -> torch.dtype:
        return torch.int8

    @property
    def nbytes(self) -> int:
        return 2 * (self.keys.numel() + self.key_scales.numel() * _SCALE_BYTES)

    def write(self, block: int, start: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        end = start + keys.shape[2]
        for x, store, scales in ((keys, self.keys, self.key_scales), (values, self.values, self.value_scales)):
            x = x.float()
            scale = x.abs().amax(dim=-1, keepdim=True) / 127  # [B, KV, T, 1]
            store[block, :, :, start:end] = (x / scale.clamp(min=1e-30)).round().clamp(-127, 127).to(torch.int8)
            scales[block, :, :, start:end] = scale

    def write_rows(self, block: int, start: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.write(block, start, keys.transpose(0, 1).unsqueeze(0), values.transpose(0, 1).unsqueeze(0))

    def read(self, block: int, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Multiply in fp32, then cast: a bf16 product would add its own rounding to the int8 error.
        keys = (self.keys[block, :, :, start:end].float() * self.key_scales[block, :, :, start:end]).to(self.dtype)
        values = (self.values[block, :, :, start:end].float() * self.value_scales[block, :, :, start:end]).to(self.dtype)
        return keys, values


def new_kv_cache(config: ModelConfig, n_blocks: int, max_length: int, batch_size: int = 1,
                 dtype: torch.dtype = torch.float32, kv_dtype: str = "auto") -> KVCache:
    """A KVCache ("auto": stored in the compute dtype) or an Int8KVCache ("int8")."""
    kv_bytes_per_token(config, 1, dtype, kv_dtype)  # validates kv_dtype
    cls = Int8KVCache if kv_dtype == "int8" else KVCache
    return cls(config, n_blocks, max_length, batch_size, dtype)
