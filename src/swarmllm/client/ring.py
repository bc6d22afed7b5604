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

Verified sessions (`--verify sample|strict`, verification.py): the last server also reports its
hidden states, so each token is checked on arrival: the client samples from those hidden states
with the same counter-based RNG, and a different token convicts the last server on its own signed
word (failover replaces it, the ring restarts from the last good token); the hidden states
themselves are checked by the witnesses like any step (strict: before the token is handed out).
A liar caught late rewinds the ring: the tokens from wrong outputs are taken back (`Retract`) and
the ring restarts from the last verified position. Before the token that ends the generation,
sample mode checks every server up to the end, as plain decoding does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable, Iterator, Optional, Sequence

import torch

from swarmllm.client.compare import token_agrees
from swarmllm.client.session import InferenceSession, RemoteStepError, committed_chunks
from swarmllm.client.verification import Rewind
from swarmllm.engine.generation import Retract
from swarmllm.engine.head import ModelHead
from swarmllm.engine.sampling import SAMPLING_OPTIONS, Sampler, SamplingParams, penalty_window
from swarmllm.protocol import ErrorCode, RingSampling, RingSpec


@dataclass
class RingStats:
    """How a generation used ring decoding."""

    starts: int = 0               # rings started (1 + restarts after failovers)
    plain_fallback: bool = False  # the rest was decoded the plain way (a chain end could not ring)


def _sampling(params: SamplingParams, draws: int, context: Sequence[int]) -> RingSampling:
    return RingSampling(**{name: getattr(params, name) for name in SAMPLING_OPTIONS},
                        seed=params.seed if params.seed is not None else 0, draws=draws,
                        history=tuple(penalty_window(params, context)))


def _speaks(session: InferenceSession, version: int) -> bool:
    """Whether every server of the session's chain negotiated `version` or later (each parses the RingSpec)."""
    return all(hop.protocol_version >= version for hop in session.hops)


async def ring_tokens(session: InferenceSession, head: ModelHead, inputs: torch.Tensor, position: int,
                      params: SamplingParams, max_tokens: int, eos_token_ids: Sequence[int] = (),
                      draws: int = 0, stats: Optional["RingStats"] = None,
                      is_last: Callable[[int, int], bool] = lambda token, produced: False,
                      context: Sequence[int] = ()) -> AsyncIterator[int]:
    """Up to max_tokens tokens after running `inputs` [1, T, D] at positions position.. .

    draws: the sampler's RNG state before the first token (see engine/sampling.py). context: the token
    ids before the first token (prompt and tokens so far), for the penalties; the ring carries their window.
    stats: counts ring starts and whether the rest fell back to plain decoding.
    is_last(token, produced): whether the consumer stops after this token (a stop string; under
    verification the end is checked before it). Verified sessions may also yield `Retract(keep)`."""
    stats = stats if stats is not None else RingStats()
    produced = 0
    context = list(context)  # grows with each token produced (and shrinks with a Retract)
    n_context = len(context)
    first_output = position + inputs.shape[1] - 1  # token k is sampled from the output at first_output + k
    draws_before: list[int] = []  # the RNG state before each token produced
    verifier = session.verifier
    inputs, position = await _prefill_all_but_last_chunk(session, inputs, position)
    failed_at: Optional[float] = None
    attempt = 0
    stopper = None  # (hop, session id) of the running ring's last server: told to stop if we end early
    try:
        while produced < max_tokens:
            sampling = _sampling(params, draws, context)
            if not session.ring_supported or (sampling.needs_v9 and not _speaks(session, 9)):
                stats.plain_fallback = True  # (a v8 server cannot sample with penalties)
                async for token in _plain(session, head, inputs, position, params, max_tokens - produced,
                                          eos_token_ids, draws, context):
                    yield token
                return
            spec = RingSpec(sampling=sampling, max_tokens=max_tokens - produced,
                            eos_token_ids=tuple(eos_token_ids), first_hop=session.first_hop(),
                            last_peer_id=session.chain[-1].peer_id)
            stopper = session.ring_stopper()
            n_new = inputs.shape[1]
            channel = None
            try:
                started = time.perf_counter()
                stats.starts += 1
                channel = await session.start_ring_step(inputs, position, max_tokens - produced, spec)
                if verifier is not None:  # strict: the witnesses run beside the ring's servers
                    verifier.begin_step(channel.base, position, n_new, committed_chunks(session.chunks, position, n_new))
                while True:
                    token = await session.next_ring_item(channel, n_new)
                    if verifier is not None:
                        await _verify_ring_step(session, head, params, draws, token, position, n_new,
                                                token.finished or produced + 1 >= max_tokens or
                                                is_last(token.token_id, produced + 1), context)
                    session.complete_step(position, n_new, time.perf_counter() - started, failed_at)
                    failed_at, attempt = None, 0
                    draws_before.append(draws)
                    produced, draws, position = produced + 1, token.draws, position + n_new
                    context.append(token.token_id)
                    if token.finished:
                        stopper = None
                    yield token.token_id
                    if token.finished or produced >= max_tokens:
                        return
                    inputs, n_new = head.embed([token.token_id]), 1
                    session.record_inputs(inputs, position)
                    if verifier is not None:
                        verifier.begin_step(channel.base + channel.delivered, position, 1,
                                            committed_chunks(session.chunks, position, 1))
                    started = time.perf_counter()
            except Rewind as rewind:  # a liar caught late: back to the last verified position
                keep = max(0, min(produced, rewind.position - first_output))
                if keep < produced:
                    draws = draws_before[keep]
                    del draws_before[keep:], context[n_context + keep:]
                    produced = keep
                    yield Retract(keep)
                position = rewind.position
                inputs = session.inputs[position:first_output + keep + 1].unsqueeze(0)
            except RemoteStepError as error:
                if channel is not None:
                    session.close_ring(channel)
                if error.code == ErrorCode.UNSUPPORTED:  # a server that cannot ring: decode the rest the plain way
                    stopper = None
                    stats.plain_fallback = True
                    async for token in _plain(session, head, inputs, position, params, max_tokens - produced,
                                              eos_token_ids, draws, context):
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


async def _verify_ring_step(session: InferenceSession, head: ModelHead, params: SamplingParams, draws: int,
                            token, position: int, n_new: int, last: bool, context: Sequence[int] = ()) -> None:
    """Check a ring step under verification: its token against the last server's reported hidden states
    (sampled here with the same RNG state), then its hidden states against the witnesses (every server,
    or sampled ones; all of them up to the end before the last token). Raises RemoteStepError(mismatch)
    to retry, Rewind, or VerificationError."""
    verifier = session.verifier
    last_hop = session.hops[-1]
    hidden = verifier.logs[last_hop.session_id][position + n_new - 1]
    logits = head.logits(hidden.reshape(1, 1, -1))[0, -1]
    expected = Sampler(params, draws=draws).sample(logits, context)
    if not token_agrees(logits, expected, token.token_id, last_hop.link.record.compute_class.key):
        verifier.convict_ring_token(last_hop, position + n_new - 1)
        raise RemoteStepError(last_hop.peer_id, ErrorCode.MISMATCH, f"its ring token at position {position + n_new} "
                                                                    "is not what its own hidden states give")
    await verifier.check_step(position, n_new, committed_chunks(session.chunks, position, n_new), force=last)


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
    done = 0  # positions of inputs the session holds
    while done < head_len:
        try:
            await session.step(inputs[:, done:head_len], position + done)
            done = head_len
        except Rewind as rewind:  # a liar caught late inside the prompt: from the last verified position again
            done = rewind.position - position
    return inputs[:, head_len:], position + head_len


async def _plain(session: InferenceSession, head: ModelHead, inputs: torch.Tensor, position: int,
                 params: SamplingParams, max_tokens: int, eos_token_ids: Sequence[int], draws: int,
                 context: Sequence[int] = ()) -> AsyncIterator[int]:
    """Client-side sampling from the same RNG state: what the ring would have produced."""
    sampler = Sampler(params, draws=draws)
    context = list(context)
    for produced in range(max_tokens):
        hidden = await session.step(inputs, position)
        position += inputs.shape[1]
        token = sampler.sample(head.logits(hidden[:, -1:])[0, -1], context)
        context.append(token)
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
                 eos_token_ids: Sequence[int] = (), tokenizer=None):
        self.run, self.session, self.eos_token_ids = run, session, tuple(eos_token_ids)
        self.tokenizer = tokenizer  # to tell when a stop string ends the generation (verified sessions)
        self.stats = RingStats()
        self._generated: list[int] = []

    def tokens(self, head: ModelHead, forward_fn, prompt_ids: Sequence[int], sampler: Sampler, limit: int,
               max_new_tokens: int) -> Iterator[int]:
        max_tokens = min(max_new_tokens, limit - len(prompt_ids) + 1)
        stops = sampler.params.stop

        def is_last(token: int, produced: int) -> bool:
            if token in self.eos_token_ids:
                return True
            return bool(stops) and self.tokenizer is not None and \
                any(stop in self.tokenizer.decode(self._generated + [token]) for stop in stops)

        stream = ring_tokens(self.session, head, head.embed([list(prompt_ids)]), 0, sampler.params, max_tokens,
                             self.eos_token_ids, sampler.draws, self.stats, is_last, context=prompt_ids)
        try:
            while True:
                try:
                    item = self.run(stream.__anext__())
                except StopAsyncIteration:
                    return
                if isinstance(item, Retract):
                    del self._generated[item.keep:]
                else:
                    self._generated.append(item)
                yield item
        finally:
            self.run(stream.aclose())
