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

import time
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable, Iterator, Optional, Sequence

import torch

from swarmllm.client.session import InferenceSession, RemoteStepError
from swarmllm.engine.head import ModelHead
from swarmllm.engine.sampling import Sampler, SamplingParams
from swarmllm.protocol import ErrorCode, RingSampling, RingSpec


@dataclass
class RingStats:
    """How a generation used ring decoding."""

    starts: int = 0               # rings started (1 + restarts after failovers)
    plain_fallback: bool = False  # the rest was decoded the plain way (a chain end could not ring)


def _sampling(params: SamplingParams, draws: int) -> RingSampling:
    return RingSampling(temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
                        seed=params.seed if params.seed is not None else 0, draws=draws)


async def ring_tokens(session: InferenceSession, head: ModelHead, inputs: torch.Tensor, position: int,
                      params: SamplingParams, max_tokens: int, eos_token_ids: Sequence[int] = (),
                      draws: int = 0, stats: Optional["RingStats"] = None) -> AsyncIterator[int]:
    """Up to max_tokens tokens after running `inputs` [1, T, D] at positions position.. .

    draws: the sampler's RNG state before the first token (see engine/sampling.py).
    stats: counts ring starts and whether the rest fell back to plain decoding."""
    stats = stats if stats is not None else RingStats()
    produced = 0
    inputs, position = await _prefill_all_but_last_chunk(session, inputs, position)
    failed_at: Optional[float] = None
    attempt = 0
    stopper = None  # (hop, session id) of the running ring's last server: told to stop if we end early
    try:
        while produced < max_tokens:
            if not session.ring_supported:
                stats.plain_fallback = True
                async for token in _plain(session, head, inputs, position, params, max_tokens - produced,
                                          eos_token_ids, draws):
                    yield token
                return
            spec = RingSpec(sampling=_sampling(params, draws), max_tokens=max_tokens - produced,
                            eos_token_ids=tuple(eos_token_ids), first_hop=session.first_hop(),
                            last_peer_id=session.chain[-1].peer_id)
            stopper = session.ring_stopper()
            n_new = inputs.shape[1]
            channel = None
            try:
                started = time.perf_counter()
                stats.starts += 1
                channel = await session.start_ring_step(inputs, position, max_tokens - produced, spec)
                while True:
                    token = await session.next_ring_item(channel, n_new)
                    session.complete_step(position, n_new, time.perf_counter() - started, failed_at)
                    failed_at, attempt = None, 0
                    produced, draws, position = produced + 1, token.draws, position + n_new
                    if token.finished:
                        stopper = None
                    yield token.token_id
                    if token.finished or produced >= max_tokens:
                        return
                    inputs, n_new = head.embed([token.token_id]), 1
                    session.record_inputs(inputs, position)
                    started = time.perf_counter()
            except RemoteStepError as error:
                if channel is not None:
                    session.close_ring(channel)
                if error.code == ErrorCode.UNSUPPORTED:  # a server that cannot ring: decode the rest the plain way
                    stopper = None
                    stats.plain_fallback = True
                    async for token in _plain(session, head, inputs, position, params, max_tokens - produced,
                                              eos_token_ids, draws):
                        yield token
                    return
                attempt += 1
                failed_at = await session.recover(error, attempt - 1, failed_at)
            finally:
                if channel is not None:
                    session.close_ring(channel)
    finally:
        if stopper is not None:  # stopped early: tell the ring
            await session.stop_ring(stopper)


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
        self.stats = RingStats()

    def tokens(self, head: ModelHead, forward_fn, prompt_ids: Sequence[int], sampler: Sampler, limit: int,
               max_new_tokens: int) -> Iterator[int]:
        max_tokens = min(max_new_tokens, limit - len(prompt_ids) + 1)
        stream = ring_tokens(self.session, head, head.embed([list(prompt_ids)]), 0, sampler.params, max_tokens,
                             self.eos_token_ids, sampler.draws, self.stats)
        try:
            while True:
                try:
                    yield self.run(stream.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self.run(stream.aclose())
