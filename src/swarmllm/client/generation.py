"""Text generation through the swarm, or in-process with the same engine (`--local`).

The client holds the embeddings, the final norm and the LM head (a few tens of MB) and the
tokenizer; the blocks run remotely. Both paths drive the engine's one generation loop with
a `forward_fn(hidden, start_position)`: locally a `SpanModel` over all blocks, remotely a
`RemoteSession` over a chain. So the swarm's output is, by construction, what the local
engine computes, and tests can compare them token for token.

Speculative decoding (`speculative="ngram"` or `"early-exit"`) drafts tokens on the client
and verifies them in one traversal of the chain (engine/speculative.py); greedy output does
not change. The early-exit drafter runs the model's first `draft_blocks` blocks locally.

Ring decoding (client/ring.py, the default through a swarm whose chain ends offer it) has the
chain's last server sample and feed the token straight to the first server; the tokens are
the same as plain decoding's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Sequence, TextIO

import torch

from swarmllm.client.ring import RingDecoder, ring_supported
from swarmllm.client.session import PREFILL_CHUNK, chunked_forward
from swarmllm.client.swarm_client import SwarmClient
from swarmllm.engine.dtypes import resolve_dtype
from swarmllm.engine.generation import iter_generate
from swarmllm.engine.head import ModelHead
from swarmllm.engine.quant import check_quant_mode
from swarmllm.engine.sampling import SamplingParams
from swarmllm.engine.speculative import DraftLength, NgramDrafter, Speculation, early_exit_drafter
from swarmllm.models.catalog import ModelSource, resolve_model
from swarmllm.weights.tokenizer import load_tokenizer
from swarmllm.protocol import SwarmError
from swarmllm.weights import load_head, read_config


class PromptTooLongError(SwarmError):
    pass


@dataclass
class ClientModel:
    """What a client keeps locally for one model: config, head and tokenizer."""

    source: ModelSource
    config: object
    head: ModelHead
    tokenizer: object

    dtype: torch.dtype = torch.float32

    @classmethod
    def load(cls, model: str, dtype: str = "auto", quant: str = "none") -> "ClientModel":
        """quant != "none" keeps the LM head as int8 (see engine/head.py)."""
        source = resolve_model(model)
        config = read_config(source)
        compute = resolve_dtype(dtype)
        head = ModelHead(config, load_head(source, config, compute if quant == "none" else torch.float32), compute, quant)
        return cls(source, config, head, load_tokenizer(source), compute)

    def prompt_ids(self, prompt: str, system: Optional[str] = None, raw: bool = False) -> list[int]:
        if raw:
            return self.tokenizer.encode(prompt)
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return self.tokenizer.encode(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True))

    def session_length(self, n_prompt: int, params: SamplingParams, max_length: Optional[int]) -> int:
        limit = min(max_length or n_prompt + params.max_new_tokens, self.config.context_length)
        if n_prompt >= limit:
            raise PromptTooLongError(
                f"the prompt is {n_prompt} tokens but the session allows at most {limit} (prompt plus new tokens); "
                f"shorten the prompt or raise --max-length (the model's context is {self.config.context_length})")
        return limit


SPECULATIVE_MODES = ("off", "ngram", "early-exit")
DEFAULT_DRAFT_BLOCKS = 8


def _load_span(source: ModelSource, config, n_blocks: int, dtype: torch.dtype, quant: str = "none"):
    from swarmllm.engine.blocks import SpanModel
    from swarmllm.weights import load_blocks

    blocks = load_blocks(source, config, 0, n_blocks, dtype if quant == "none" else torch.float32,
                         keep_int4=quant == "int4")
    return SpanModel(config, blocks, 0, n_blocks, dtype, quant)


def local_forward_fn(source: ModelSource, config, max_length: int, dtype: torch.dtype, quant: str = "none",
                     prefill_chunk: Optional[int] = PREFILL_CHUNK, span=None):
    """forward_fn over all blocks in this process (the reference path; quant: see engine/quant.py).

    Long prompts are cut into the same chunks a swarm session pipelines, so both compute the same thing."""
    span = span or _load_span(source, config, config.n_blocks, dtype, quant)
    cache = span.new_cache(max_length)
    return chunked_forward(lambda hidden, start_position: span.forward(hidden, cache, start_position), prefill_chunk)


def new_speculation(local: ClientModel, mode: str, params: SamplingParams, max_length: int, draft_k: int = 8,
                    draft_blocks: int = DEFAULT_DRAFT_BLOCKS, span=None) -> Optional[Speculation]:
    """The Speculation for `mode` (None for "off"); early-exit loads blocks [0, draft_blocks)
    unless `span` (starting at block 0) already holds them."""
    if mode not in SPECULATIVE_MODES:
        raise ValueError(f"unknown speculative mode {mode!r}; use one of {', '.join(SPECULATIVE_MODES)}")
    if mode == "off":
        return None
    length = DraftLength(max_k=draft_k)
    if mode == "ngram":
        return Speculation(NgramDrafter(), length)
    if not 1 <= draft_blocks < local.config.n_blocks:
        raise ValueError(f"--draft-blocks must be 1..{local.config.n_blocks - 1}, got {draft_blocks}")
    span = span or _load_span(local.source, local.config, draft_blocks, local.dtype)
    return Speculation(early_exit_drafter(local.head, span, draft_blocks, max_length, params), length)


def generate_text(model: str, prompt: str, params: SamplingParams, *, initial_peers: Optional[Sequence[str]] = None,
                  system: Optional[str] = None, raw: bool = False, max_length: Optional[int] = None,
                  stream_to: Optional[TextIO] = None, client: Optional[SwarmClient] = None,
                  dtype: str = "auto", wire_dtype: Optional[str] = None, quant: str = "none",
                  prefill_chunk: Optional[int] = PREFILL_CHUNK, speculative: str = "off",
                  draft_k: int = 8, draft_blocks: int = DEFAULT_DRAFT_BLOCKS, ring: Optional[bool] = None) -> dict:
    """Generate a reply; through the swarm if initial_peers (or client) is given, else locally.

    wire_dtype: format of hidden states between nodes (see protocol WIRE_DTYPES); None = lossless.
    quant: weight quantization of the in-process model ("none", "int8", "int4"); local only,
    since a swarm's servers choose their own (`swarmllm serve --quant`).
    prefill_chunk: prompts longer than this are prefilled in chunks (pipelined through the
    chain); None = in one piece.
    speculative: "off", "ngram" or "early-exit" (see SPECULATIVE_MODES); draft_k is the most
    tokens drafted per round (the draft length adapts below it to the acceptance rate).
    ring: ring decoding through a swarm: None = when the chain offers it and there is no
    speculation, True = ask for it (an error with speculation or locally), False = never. The
    result's "ring" says whether it was used.
    """
    check_quant_mode(quant)
    swarm = initial_peers is not None or client is not None
    if ring is None:
        ring = swarm and speculative == "off"
    if ring and speculative != "off":
        raise ValueError("ring decoding and speculative decoding do not combine; choose one")
    if ring and not swarm:
        raise ValueError("ring decoding needs a swarm (--peers); in-process generation has no chain")
    if quant != "none" and (initial_peers is not None or client is not None):
        raise ValueError("quant applies to in-process generation only; servers quantize their own weights "
                         "(swarmllm serve --quant).")
    local = ClientModel.load(model, dtype, quant)
    prompt_ids = local.prompt_ids(prompt, system, raw)
    length = local.session_length(len(prompt_ids), params, max_length)
    own_client = None
    session = None
    decoder = None
    try:
        if initial_peers is None and client is None:
            span = _load_span(local.source, local.config, local.config.n_blocks, local.dtype, quant)
            forward_fn = local_forward_fn(local.source, local.config, length, local.dtype, quant, prefill_chunk, span)
            route = "local"
            speculation = new_speculation(local, speculative, params, length, draft_k, draft_blocks, span)
        else:
            speculation = new_speculation(local, speculative, params, length, draft_k, draft_blocks)
            client = client or (own_client := SwarmClient.connect(initial_peers))
            session = client.open_session(local.source.model_id, local.config.n_blocks, length, wire_dtype=wire_dtype,
                                          prefill_chunk=prefill_chunk)
            forward_fn = session.forward
            route = " -> ".join(f"{link.peer_id[-8:]}[{link.start},{link.end})" for link in session.chain)
            decoder = RingDecoder(client.loop.run, session.session, local.tokenizer.eos_token_ids) if ring \
                else speculation
            ring = ring and ring_supported(session.session)
        started = time.perf_counter()
        token_ids: list[int] = []
        pieces: list[str] = []
        first_token_at = None
        finish_reason = "length"
        for event in iter_generate(local.head, local.tokenizer, forward_fn, prompt_ids, params, length,
                                   decoder or speculation):
            if first_token_at is None:
                first_token_at = time.perf_counter()
            token_ids.append(event.token_id)
            pieces.append(event.text_delta)
            if stream_to is not None and event.text_delta:
                stream_to.write(event.text_delta)
                stream_to.flush()
            finish_reason = event.finish_reason or finish_reason
        ended = time.perf_counter()
    finally:
        if session is not None:
            session.close()
        if own_client is not None:
            own_client.close()
    n = len(token_ids)
    ttft = (first_token_at or ended) - started
    return {
        "text": "".join(pieces), "token_ids": token_ids, "prompt_tokens": len(prompt_ids),
        "generated_tokens": n, "finish_reason": finish_reason, "route": route,
        "time_to_first_token": ttft, "total_seconds": ended - started,
        "decode_tokens_per_second": (n - 1) / (ended - first_token_at) if n > 1 and ended > first_token_at else 0.0,
        "speculative": speculative, "speculation": None if speculation is None else speculation.stats.as_dict(),
        "ring": ring,
    }
