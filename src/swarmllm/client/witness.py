"""A witness: an independent server (or chain of servers) re-computing one span of a session.

The verifying client (verification.py) gives each server of its chain a witness over exactly that
server's blocks, on other peers. The witness is an ordinary `InferenceSession` (receipts, failover
and all) whose inputs are the inputs the checked server received: the client's own for the first
span, the previous server's reported outputs (OpenSession.report_outputs) for the others. It keeps
its own KV cache and lags as far behind as the verification mode lets it: `sync(inputs, end)`
brings it to position `end` and returns its outputs for the positions it ran.

Chunks: `exact` runs the positions in the chunks the session ran them in (`chunks`: the session's
committed step lengths), so a witness of the same class returns the same bytes; otherwise the
positions since its last sync run in chunks of up to `merge` positions, which costs a fraction of
the decode steps (one row-parallel pass instead of one pass per position) but rounds differently
(compared within the tolerance of compare.py).
"""

from __future__ import annotations

from typing import Optional

import torch

MERGE_POSITIONS = 256  # largest chunk of a lagging witness's catch-up (the prefill chunk)


def chunk_plan(start: int, end: int, chunks: list[int], exact: bool, merge: int = MERGE_POSITIONS
               ) -> list[tuple[int, int]]:
    """(start, length) steps covering positions [start, end): along the session's chunk boundaries
    (`chunks` sum to at least `end`) when exact, else in pieces of at most `merge`."""
    if not exact:
        return [(p, min(merge, end - p)) for p in range(start, end, merge)]
    steps, position = [], 0
    for length in chunks:
        chunk_end = position + length
        if chunk_end > start and position < end:
            if position < start:  # a sync point inside a chunk: not a boundary (cannot happen exactly)
                raise ValueError(f"position {start} is not a chunk boundary of the session")
            steps.append((position, min(chunk_end, end) - position))
        position = chunk_end
        if position >= end:
            break
    return steps


class Witness:
    """One span [start, end) re-computed on other servers (module docstring)."""

    def __init__(self, session, start: int, end: int):
        self.session, self.start, self.end = session, start, end  # an opened InferenceSession over [start, end)
        self.position = 0      # positions its cache holds (as the checked session ran them)
        self.exact: Optional[bool] = None  # runs the session's own chunks (set by the verifier at its first sync)

    @property
    def peer_ids(self) -> tuple[str, ...]:
        return tuple(link.peer_id for link in self.session.chain)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(link.record.compute_class.key for link in self.session.chain)

    def rewind(self, position: int) -> None:
        """The checked session recomputes from `position` on: so will the witness."""
        self.position = min(self.position, position)

    async def sync(self, inputs: torch.Tensor, end: int, chunks: list[int], exact: bool) -> tuple[int, torch.Tensor]:
        """Run positions [self.position, end) of `inputs` [>=end, D]; returns (first position run, outputs
        [end - first, D]). RemoteStepError if the witness's own chain fails beyond its failover."""
        first = self.position
        outputs = []
        for position, length in chunk_plan(first, end, chunks, exact):
            hidden = inputs[position:position + length].unsqueeze(0)
            out = await self.session.step_with_failover(hidden, position)
            outputs.append(out[0])
            self.position = position + length
        if not outputs:
            return first, inputs[:0]
        return first, torch.cat(outputs)

    async def close(self) -> None:
        await self.session.close()

