"""What the client believes about servers' speed: its own measurements first, claims only as capped priors.

A server announces its decode throughput, but a record is only a claim: a hostile peer can
announce 1e9 tokens/s (the most a valid record may claim) to attract every session. So
routing (routing.py) prices a hop with
`block_seconds(peer)`, the seconds one decode position takes per block on that server:
- measured, once the client has timed steps through a chain holding that server: after each
  decode step the time the chain spent computing (the step's time minus the hops' measured
  link latency) is compared with what the estimates predicted, and every hop's estimate is
  scaled by that ratio (the total is then exact; one chain cannot tell which hop was slow, but
  sessions over different chains (overlapping spans, failovers) separate them; an exponential
  moving average smooths it). A lone hop is measured exactly;
- otherwise a prior from the announcement, capped at the median announced speed of the
  model's servers: a claim can make a server look as fast as a typical one, never faster.

Pure: no I/O, no clock; the session reports step times, the SwarmClient owns one instance.
"""

from __future__ import annotations

import statistics
from typing import Iterable, Mapping, Sequence

from swarmllm.protocol import ServerRecord

DEFAULT_RTT = 0.15       # seconds, for servers we have not pinged
HOP_OVERHEAD = 0.002     # seconds per extra hop (encode, decode, framing)
SMOOTHING = 0.5          # weight of the newest observation in a measured estimate
MIN_COMPUTE_SHARE = 0.05  # a step never counts as less than this share of its predicted compute


def announced_block_seconds(record: ServerRecord) -> float:
    """Seconds per block per decode position, as the record claims it."""
    return 1.0 / (max(record.throughput, 1e-6) * max(record.span_length, 1))


def capped_priors(records: Iterable[ServerRecord]) -> dict[str, float]:
    """Per peer, the announced seconds per block, but never faster than the (lower) median announcement."""
    claims = {r.peer_id: announced_block_seconds(r) for r in records}
    if not claims:
        return {}
    floor = statistics.median_high(claims.values())  # seconds: the higher median is the slower typical server
    return {peer: max(seconds, floor) for peer, seconds in claims.items()}


class SpeedEstimates:
    """Measured seconds per block of the servers this client has timed."""

    def __init__(self, smoothing: float = SMOOTHING):
        self.smoothing = smoothing
        self.measured: dict[str, float] = {}
        self.observations: dict[str, int] = {}

    def block_seconds(self, records: Iterable[ServerRecord]) -> dict[str, float]:
        """For routing: measurements where the client has them, capped priors elsewhere."""
        estimates = capped_priors(records)
        estimates.update({peer: s for peer, s in self.measured.items() if peer in estimates})
        return estimates

    def observe(self, hops: Sequence[tuple[str, int]], seconds: float, rtts: Mapping[str, float],
                priors: Mapping[str, float]) -> None:
        """A decode step through `hops` ((peer id, blocks run there) in chain order) took `seconds`."""
        if not hops or seconds <= 0:
            return
        current = {peer: self.measured.get(peer, priors.get(peer)) for peer, _ in hops}
        if any(value is None for value in current.values()):
            return  # a hop we know nothing about (no record): nothing to scale from
        predicted = {peer: blocks * current[peer] for peer, blocks in hops}
        total = sum(predicted.values())
        if not total > 0:
            return  # estimates that shrank to nothing (steps always quicker than their links) scale nothing
        links = sum(rtts.get(peer, DEFAULT_RTT) / 2 + HOP_OVERHEAD for peer, _ in hops)
        compute = max(seconds - links, MIN_COMPUTE_SHARE * total)
        ratio = compute / total
        for peer, _ in hops:
            updated = current[peer] * ratio
            old = self.measured.get(peer)
            self.measured[peer] = updated if old is None else (1 - self.smoothing) * old + self.smoothing * updated
            self.observations[peer] = self.observations.get(peer, 0) + 1

    def forget(self, peer_id: str) -> None:
        self.measured.pop(peer_id, None)
        self.observations.pop(peer_id, None)
