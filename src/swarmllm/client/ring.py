"""Ring decoding, the client's side: start a ring, watch the tokens, recover from failures.

In ring mode the chain's last server samples each token and sends it straight to the first
server (protocol.messages.RingSpec), so a token costs one trip around the servers instead of
client -> chain -> client; the client receives every token as a `TokenResult` off that path.

`ring_tokens(session, head, inputs, position, params, max_tokens, eos)` yields the tokens.
The client still embeds each token it receives and keeps it as the input of its position,
exactly as plain decoding would, so failover works unchanged: on an error or a silent ring,
the session recovers (replacement servers, KV replay) and the ring restarts from the last
token received, with the RNG state (draw counter) that token reported. So a faulted run
yields the same tokens as an unfaulted one. If a server of the chain cannot ring (it holds no
model head), the rest is decoded the plain way with the client's own sampler, from the same
RNG state: the tokens do not change either.

Closing the iterator early (a stop string) sends `RingStop` to the last server.
"""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Awaitable, Callable, Iterator, Optional, Sequence

import torch

from swarmllm.client.session import InferenceSession, RemoteStepError
from swarmllm.engine.head import ModelHead
from swarmllm.engine.sampling import Sampler, SamplingParams
from swarmllm.protocol import (
    RingSampling, RingSpec, RingStop, Step, TokenResult, encode_frame, encode_tensor,
)


def ring_supported(session: InferenceSession) -> bool:
    """Whether the chain's first and last servers announced that they can ring."""
    return bool(getattr(session.hops[0].link.record, "ring", False) and
                getattr(session.hops[-1].link.record, "ring", False))


def _sampling(params: SamplingParams, draws: int) -> RingSampling:
    return RingSampling(temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
                        seed=params.seed if params.seed is not None else 0, draws=draws)


async def ring_tokens(session: InferenceSession, head: ModelHead, inputs: torch.Tensor, position: int,
                      params: SamplingParams, max_tokens: int, eos_token_ids: Sequence[int] = (),
                      draws: int = 0) -> AsyncIterator[int]:
    """Up to max_tokens tokens after running `inputs` [1, T, D] at positions position.. .

    draws: the sampler's RNG state before the first token (see engine/sampling.py)."""
    produced = 0
    inputs, position = await _prefill_all_but_last_chunk(session, inputs, position)
    if session.inputs is None:
        session.inputs = torch.empty(session.max_length, inputs.shape[2], dtype=inputs.dtype)
    failed_at: Optional[float] = None
    attempt = 0
    last_stop: Optional[tuple] = None  # (hop, session id) of the running ring's last server
    try:
        while produced < max_tokens:
            if not ring_supported(session):
                async for token in _plain(session, head, inputs, position, params, max_tokens - produced,
                                          eos_token_ids, draws):
                    yield token
                return
            channel = session.open_ring(max_tokens - produced)
            spec = RingSpec(sampling=_sampling(params, draws), max_tokens=max_tokens - produced,
                            eos_token_ids=tuple(eos_token_ids), first_hop=session.hops[0].next_hop())
            last_stop = (session.hops[-1], session.hops[-1].session_id)
            n_new = inputs.shape[1]
            try:
                session.inputs[position:position + n_new] = inputs[0]
                meta, raw = encode_tensor(inputs, session.wire_dtype)
                started = time.perf_counter()
                try:
                    await session.hops[0].stream.send(encode_frame(Step(
                        session_id=session.hops[0].session_id, step_id=channel.base, start_position=position,
                        tensor=meta, ring=spec), raw))
                except ConnectionError as e:
                    raise RemoteStepError(session.hops[0].peer_id, "connection_lost", str(e)) from None
                while True:
                    token = await _next_token(session, channel, n_new)
                    session.complete_step(position, n_new, time.perf_counter() - started, failed_at)
                    failed_at, attempt = None, 0
                    produced, draws, position = produced + 1, token.draws, position + n_new
                    if token.finished:
                        last_stop = None
                    yield token.token_id
                    if token.finished or produced >= max_tokens:
                        return
                    inputs, n_new = head.embed([token.token_id]), 1
                    session.inputs[position] = inputs[0, 0]
                    started = time.perf_counter()
            except RemoteStepError as error:
                session.close_ring(channel)
                if error.code == "unsupported":  # a server that cannot ring: decode the rest the plain way
                    last_stop = None
                    async for token in _plain(session, head, inputs, position, params, max_tokens - produced,
                                              eos_token_ids, draws):
                        yield token
                    return
                attempt += 1
                failed_at = await session.recover(error, attempt - 1, failed_at)
            finally:
                session.close_ring(channel)
    finally:
        if last_stop is not None and not session.closed:  # stopped early: tell the ring
            hop, session_id = last_stop
            try:
                await asyncio.wait_for(hop.stream.send(encode_frame(RingStop(session_id=session_id))), 1.0)
            except (ConnectionError, asyncio.TimeoutError, AttributeError):
                pass


async def _prefill_all_but_last_chunk(session: InferenceSession, inputs: torch.Tensor,
                                     position: int) -> tuple[torch.Tensor, int]:
    """Run the prompt's leading full chunks as ordinary (pipelined) steps; return the last chunk,
    which starts the ring, and its position. The chunks are those of plain decoding, so the
    numbers are too."""
    size = session.prefill_chunk
    n = inputs.shape[1]
    if not size or n <= size:
        return inputs, position
    head_len = size * ((n - 1) // size)
    await session.step(inputs[:, :head_len], position)
    return inputs[:, head_len:], position + head_len


async def _next_token(session: InferenceSession, channel, n_new: int) -> TokenResult:
    timeout = session.timeout_for(n_new)
    try:
        item = await asyncio.wait_for(channel.queue.get(), timeout)
    except asyncio.TimeoutError:
        raise RemoteStepError(session.hops[-1].peer_id, "timeout",
                              f"ring step got no token within {timeout:.1f} s") from None
    if isinstance(item, RemoteStepError):
        raise item
    return item


async def _plain(session: InferenceSession, head: ModelHead, inputs: torch.Tensor, position: int,
                 params: SamplingParams, max_tokens: int, eos_token_ids: Sequence[int], draws: int
                 ) -> AsyncIterator[int]:
    """Client-side sampling from the same RNG state: what the ring would have produced."""
    sampler = Sampler(params, draws=draws)
    for produced in range(max_tokens):
        hidden = await session.step(inputs, position)
        position += inputs.shape[1]
        token = sampler.sample(head.logits(hidden[:, -1:])[0, -1])
        yield token
        if token in eos_token_ids:
            return
        inputs = head.embed([token])


class RingDecoder:
    """The engine's `Decoder` (engine/generation.py) for ring decoding over a session.

    `run` executes a coroutine on the session's event loop and returns its result (the
    SwarmClient's background loop); iter_generate stays synchronous.
    """

    def __init__(self, run: Callable[[Awaitable], object], session: InferenceSession,
                 eos_token_ids: Sequence[int] = ()):
        self.run, self.session, self.eos_token_ids = run, session, tuple(eos_token_ids)

    def tokens(self, head: ModelHead, forward_fn, prompt_ids: Sequence[int], sampler: Sampler, limit: int,
               max_new_tokens: int) -> Iterator[int]:
        max_tokens = min(max_new_tokens, limit - len(prompt_ids) + 1)
        stream = ring_tokens(self.session, head, head.embed([list(prompt_ids)]), 0, sampler.params, max_tokens,
                             self.eos_token_ids, sampler.draws)
        try:
            while True:
                try:
                    yield self.run(stream.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self.run(stream.aclose())
