"""Loading recipes: a span of blocks, the head, a client's model and the local reference model.

The recipe for quantized weights is the same everywhere: blocks are read in float32 (the
quantizer works from full-precision values), kept as int8 / int4 by the engine, and computed
in the compute dtype; a GGUF's 4-bit tensors are handed over as their codes (`keep_int4`). A
client's LM head follows the same rule (int8 when quant != "none", see engine/head.py).

`LocalModel.new_forward_fn` cuts long prompts into the chunks a swarm session pipelines
(`engine.generation.PREFILL_CHUNK`), so the reference computes exactly what a swarm does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from swarmllm.engine.blocks import SpanModel
from swarmllm.engine.dtypes import resolve_dtype
from swarmllm.engine.generation import (
    PREFILL_CHUNK, Decoder, ForwardFn, GenerationResult, chunked_forward, generate,
)
from swarmllm.engine.head import ModelHead
from swarmllm.engine.quant import check_quant_mode
from swarmllm.engine.sampling import SamplingParams
from swarmllm.models.catalog import ModelSource, resolve_model
from swarmllm.models.config import ModelConfig
from swarmllm.protocol import SwarmError
from swarmllm.weights import load_blocks, load_head, read_config
from swarmllm.weights.tokenizer import Tokenizer, load_tokenizer


DEFAULT_MAX_LENGTH = 4096


class PromptTooLongError(SwarmError):
    """The prompt (plus the tokens to generate) does not fit the session or the model."""


def resolve_compute_dtype(dtype: str | torch.dtype) -> torch.dtype:
    return dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype)


def _source(model: ModelSource | str) -> ModelSource:
    return model if isinstance(model, ModelSource) else resolve_model(model)


def load_span(model: ModelSource | str, start: int, end: int, dtype: str | torch.dtype = "auto",
              quant: str = "none", config: Optional[ModelConfig] = None) -> SpanModel:
    """Blocks [start, end) of `model` in the compute dtype; quant "int8"/"int4" keeps the weights
    quantized (see engine/quant.py). Only the span's tensors are read."""
    check_quant_mode(quant)
    source = _source(model)
    config = config or read_config(source)
    config.check_span(start, end)
    compute = resolve_compute_dtype(dtype)
    load_dtype = compute if quant == "none" else torch.float32  # quantize from full-precision values
    blocks = load_blocks(source, config, start, end, load_dtype, keep_int4=quant == "int4")
    return SpanModel(config, blocks, start, end, compute, quant)


def load_model_head(model: ModelSource | str, dtype: str | torch.dtype = "auto", quant: str = "none",
                    config: Optional[ModelConfig] = None) -> ModelHead:
    """Embedding, final norm and LM head; int8 when quant != "none"."""
    check_quant_mode(quant)
    source = _source(model)
    config = config or read_config(source)
    compute = resolve_compute_dtype(dtype)
    weights = load_head(source, config, compute if quant == "none" else torch.float32)
    return ModelHead(config, weights, compute, quant)


@dataclass
class ClientModel:
    """What a client keeps locally for one model: config, head and tokenizer."""

    source: ModelSource
    config: ModelConfig
    head: ModelHead
    tokenizer: Tokenizer
    dtype: torch.dtype = torch.float32
    quant: str = "none"

    @classmethod
    def load(cls, model: ModelSource | str, dtype: str | torch.dtype = "auto", quant: str = "none") -> "ClientModel":
        source = _source(model)
        config = read_config(source)
        head = load_model_head(source, dtype, quant, config)
        return cls(source, config, head, load_tokenizer(source), head.dtype, quant)

    @property
    def model_id(self) -> str:
        return self.source.model_id

    def prompt_ids(self, prompt: str, system: Optional[str] = None, raw: bool = False) -> list[int]:
        """The prompt's ids: wrapped in the chat template (with a system message), or as is (raw)."""
        if raw:
            return self.tokenizer.encode(prompt)
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return self.chat_ids(messages)

    def chat_ids(self, messages: list[dict]) -> list[int]:
        return self.tokenizer.encode(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True))

    def session_length(self, n_prompt: int, max_new_tokens: int, max_length: Optional[int] = None) -> int:
        """Positions to reserve: prompt + new tokens (or max_length), within the model's context."""
        limit = min(max_length or n_prompt + max_new_tokens, self.config.context_length)
        if n_prompt >= limit:
            raise PromptTooLongError(
                f"the prompt is {n_prompt} tokens but the session allows at most {limit} (prompt plus new tokens); "
                f"shorten the prompt or raise --max-length (the model's context is {self.config.context_length})")
        return limit


@dataclass
class LocalModel(ClientModel):
    """A whole model in one process: the reference that distributed output must equal."""

    span: Optional[SpanModel] = None
    max_length: int = DEFAULT_MAX_LENGTH  # default KV length of new_forward_fn

    @classmethod
    def load(cls, model: ModelSource | str, dtype: str | torch.dtype = "auto", quant: str = "none",
             max_length: Optional[int] = None) -> "LocalModel":
        client = ClientModel.load(model, dtype, quant)
        span = load_span(client.source, 0, client.config.n_blocks, client.dtype, quant, client.config)
        length = min(max_length or DEFAULT_MAX_LENGTH, client.config.context_length)
        return cls(client.source, client.config, client.head, client.tokenizer, client.dtype, quant, span, length)

    def new_forward_fn(self, max_length: Optional[int] = None, prefill_chunk: Optional[int] = PREFILL_CHUNK) -> ForwardFn:
        """forward_fn over all blocks with a fresh KV cache of `max_length` positions; prompts longer
        than `prefill_chunk` run in the chunks a swarm session pipelines (None: in one piece)."""
        cache = self.span.new_cache(max_length or self.max_length)
        return chunked_forward(lambda hidden, start_position: self.span.forward(hidden, cache, start_position),
                               prefill_chunk)

    def generate(self, prompt_ids: list[int], params: SamplingParams,
                 decoder: Optional[Decoder] = None) -> GenerationResult:
        """Greedy or sampled generation in this process (the engine's loop, no options object)."""
        return generate(self.head, self.tokenizer, self.new_forward_fn(), prompt_ids, params, self.max_length, decoder)
