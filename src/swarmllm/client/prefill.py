"""Pipelined prefill: a long prompt's chunks all in flight through the chain at once.

`pipelined_step(session, hidden, start)` cuts a step of more than `session.prefill_chunk`
positions into chunks of that size and sends them all before waiting, so while server B runs
chunk 1, server A already runs chunk 2. The chunks are the ones the local reference computes
(`engine.generation.chunked_forward`), so outputs agree bit for bit. If anything fails, the
chunks not yet committed go the ordinary way, one at a time, with failover.
"""

from __future__ import annotations

import asyncio

import torch

from swarmllm.client.chain import RemoteStepError


async def pipelined_step(session, hidden: torch.Tensor, start_position: int) -> torch.Tensor:
    size, n_new = session.prefill_chunk, hidden.shape[1]
    session.record_inputs(hidden, start_position)
    pieces = [(offset, hidden[:, offset:offset + size]) for offset in range(0, n_new, size)]
    futures: dict[int, asyncio.Future] = {}
    outputs: list[torch.Tensor] = []
    try:
        for offset, piece in pieces:
            step_id = session.new_step_id()
            frame, sent = session.step_frame(piece, start_position + offset, step_id)
            futures[step_id] = session.expect(step_id, start_position + offset, piece.shape[1], sent)
            await session.hops[0].stream.send(frame)
        for (offset, piece), (step_id, future) in zip(pieces, futures.items()):
            timeout = session.timeout_for(piece.shape[1])
            try:
                outputs.append(await asyncio.wait_for(future, timeout))
            except asyncio.TimeoutError:
                raise session.timeout_error(step_id, timeout) from None
            session.commit(start_position + offset, piece.shape[1])
    except (RemoteStepError, ConnectionError):
        # Whatever was not committed goes the ordinary way, one chunk at a time, with failover.
        for offset, piece in pieces[len(outputs):]:
            outputs.append(await session.step_with_failover(piece, start_position + offset))
    finally:
        for step_id in futures:
            session.forget(step_id)
    return torch.cat(outputs, dim=1)
