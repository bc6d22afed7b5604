"""The node's compute backend: the engine's `SpanModel` over the node's span.

Loads only the span's tensors (weights dense in the compute dtype, or kept as int8 / int4
with `quant`, see engine/quant.py), creates per-session KV caches for sub-spans (in the compute
dtype, or int8 with `kv_dtype="int8"`: the byte counts below follow, so the session budget
admits correspondingly more positions), hands out the `SpanModel` of a sub-span (steps run
through it in batches, see batching.py) and measures decode throughput. For ring decoding
the model's head (embedding, final norm, LM head) is loaded on first use, when the file holds
it (a partial download of a span does not). A failed `forward`
leaves the cache's valid length
unchanged (the engine advances it only after all blocks ran), so a session survives a
rejected or crashed step.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass

import torch

from swarmllm.engine.blocks import SpanModel
from swarmllm.engine.head import ModelHead
from swarmllm.engine.kv_cache import KVCache, kv_bytes_per_token
from swarmllm.models.catalog import resolve_model
from swarmllm.protocol import ComputeClass
from swarmllm.runtime import load_model_head, load_span
from swarmllm.runtime.compute_class import compute_class_of
from swarmllm.weights import block_parameter_counts, read_config


@dataclass(frozen=True)
class ModelDescription:
    model_id: str
    n_blocks: int
    hidden_size: int
    block_weights: int  # weights of the largest block (header only; sizes a span against memory)


class SpanBackend:
    def __init__(self, model_id: str, config, span: SpanModel, dtype: torch.dtype, kv_dtype: str = "auto",
                 source=None):
        self.model_id, self.config, self.span, self.dtype, self.kv_dtype = model_id, config, span, dtype, kv_dtype
        self.source = source  # where the head is loaded from for ring decoding (None: not available)
        self._head: ModelHead | None = None
        self._head_lock = threading.Lock()
        self.quant = span.quant
        self.start, self.end = span.start, span.end
        self.n_blocks = config.n_blocks
        self.hidden_size = config.hidden_size
        self.kv_bytes_per_block_position = kv_bytes_per_token(config, 1, dtype, kv_dtype)
        self.history_bytes_per_position = config.hidden_size * torch.empty(0, dtype=dtype).element_size()
        self._sub_spans: dict[tuple[int, int], SpanModel] = {(self.start, self.end): span}
        self._compute_class: ComputeClass | None = None

    @staticmethod
    def describe(model: str) -> ModelDescription:
        source = resolve_model(model)
        config = read_config(source)
        return ModelDescription(source.model_id, config.n_blocks, config.hidden_size,
                                max(block_parameter_counts(source, config)))

    @classmethod
    def load(cls, model: str, start: int, end: int, num_threads: int | None = None,
             dtype_name: str = "auto", kv_dtype: str = "auto", quant: str = "none") -> "SpanBackend":
        """quant: weights kept as "none" (compute dtype), "int8" or "int4" (see engine/quant.py)."""
        if num_threads:
            torch.set_num_threads(num_threads)
        source = resolve_model(model)
        config = read_config(source)
        span = load_span(source, start, end, dtype_name, quant, config)
        return cls(source.model_id, config, span, span.dtype, kv_dtype, source)

    def head(self) -> ModelHead:
        """The model's embedding and LM head in the compute dtype, loaded on first use.

        Raises LookupError when the file does not hold them (a partial copy of a span)."""
        with self._head_lock:  # loaded once, whether by the preload thread or a ring
            if self._head is None:
                if self.source is None:
                    raise LookupError("this node has no source for the model's head")
                try:
                    self._head = load_model_head(self.source, self.dtype, "none", self.config)
                except (KeyError, ValueError, OSError) as e:
                    raise LookupError(f"the model's head could not be loaded: {e}") from None
            return self._head

    @property
    def compute_class(self) -> ComputeClass:
        """What decides this span's outputs bit for bit (announced; receipts name its key)."""
        if self._compute_class is None:
            self._compute_class = compute_class_of(self.span, self.kv_dtype)
        return self._compute_class

    @property
    def ends_a_chain(self) -> bool:
        """Whether this span can be a chain's first or last (holds block 0 or the last block):
        only such nodes embed or sample in ring decoding."""
        return self.start == 0 or self.end == self.n_blocks

    def model(self, start: int, end: int) -> SpanModel:
        """Blocks [start, end) of the span, sharing its weights; one object per sub-span."""
        model = self._sub_spans.get((start, end))
        if model is None:
            model = self._sub_spans[(start, end)] = self.span.view(start, end)
        return model

    def new_cache(self, start: int, end: int, max_length: int) -> KVCache:
        return self.model(start, end).new_cache(max_length, kv_dtype=self.kv_dtype)

    def forward(self, hidden: torch.Tensor, cache: KVCache, start: int, end: int, start_position: int) -> torch.Tensor:
        return self.model(start, end).forward(hidden, cache, start_position)

    def measure_throughput(self, steps: int = 8) -> float:
        """Decode tokens/s through the whole span (one position per step)."""
        cache = self.span.new_cache(steps + 4, kv_dtype=self.kv_dtype)
        hidden = torch.randn(1, 1, self.hidden_size, generator=torch.Generator().manual_seed(0))
        timings = []
        for position in range(steps + 2):
            started = time.perf_counter()
            self.span.forward(hidden, cache, position)
            timings.append(time.perf_counter() - started)
        return 1.0 / statistics.median(timings[2:])  # the first steps warm up kernels and caches
