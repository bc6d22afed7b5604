"""LocalModel: a whole model in one process (head + all blocks + tokenizer).

Used for local chat, as the oracle that distributed output must equal, and by benchmarks.
`new_forward_fn()` returns a `forward_fn` with its own KV cache, the same callable shape the
swarm client provides, so both paths share `swarmllm.engine.generation`. Loading reads files
through `swarmllm.weights`; after that everything is pure compute.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from swarmllm.engine.blocks import SpanModel
from swarmllm.engine.generation import ForwardFn, GenerationResult, generate
from swarmllm.engine.head import ModelHead
from swarmllm.engine.quant import check_quant_mode
from swarmllm.engine.sampling import SamplingParams
from swarmllm.engine.speculative import Speculation
from swarmllm.models.catalog import ModelSource, resolve_model
from swarmllm.models.config import ModelConfig
from swarmllm.weights.tokenizer import Tokenizer, load_tokenizer

DEFAULT_MAX_LENGTH = 4096


@dataclass
class LocalModel:
    config: ModelConfig
    head: ModelHead
    span: SpanModel
    tokenizer: Tokenizer
    max_length: int

    @classmethod
    def load(
        cls, source: ModelSource | str, dtype: torch.dtype = torch.float32, max_length: int | None = None,
        quant: str = "none",
    ) -> "LocalModel":
        """quant: "none", "int8" or "int4" weights for the blocks; the LM head is int8 unless "none"."""
        from swarmllm.weights import load_blocks, load_head, read_config

        check_quant_mode(quant)
        if isinstance(source, str):
            source = resolve_model(source)
        config = read_config(source)
        load_dtype = dtype if quant == "none" else torch.float32  # quantize from full-precision values
        blocks = load_blocks(source, config, 0, config.n_blocks, load_dtype, keep_int4=quant == "int4")
        span = SpanModel(config, blocks, 0, config.n_blocks, dtype, quant)
        del blocks
        head = ModelHead(config, load_head(source, config, load_dtype), dtype, quant)
        length = min(max_length or DEFAULT_MAX_LENGTH, config.context_length)
        return cls(config, head, span, load_tokenizer(source), length)

    def new_forward_fn(self, max_length: int | None = None) -> ForwardFn:
        """A forward_fn over all blocks with a fresh KV cache of `max_length` positions."""
        cache = self.span.new_cache(max_length or self.max_length)

        def forward_fn(hidden: torch.Tensor, start_position: int) -> torch.Tensor:
            return self.span.forward(hidden, cache, start_position)

        return forward_fn

    def encode_chat(self, messages: list[dict]) -> list[int]:
        return self.tokenizer.encode(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True))

    def generate(self, prompt_ids: list[int], params: SamplingParams,
                 speculation: Speculation | None = None) -> GenerationResult:
        return generate(self.head, self.tokenizer, self.new_forward_fn(), prompt_ids, params, self.max_length,
                        speculation)
