"""What the dashboard shows over time, from successive reads of the swarm's records (pure, no I/O).

`SwarmHistory.observe(records, n_blocks_of, now)` is called once per gateway refresh with the
verified server records it read; it keeps, bounded in memory:
- `timeline`: joins and departures. A peer *joins* a model when it first appears ONLINE there (and
  again after a departure); it *departs* when it announces LEAVING or its records disappear (they
  expire record_ttl s after its last refresh, so a crashed node departs within that time). A peer
  that changes span while online *moves*. Events of the first read are `initial` (the gateway
  cannot tell whether those nodes just joined). At most `max_events`, oldest dropped first.
- `coverage`: per model, servers per block at each refresh (what `/api/swarm` shows now, over
  time), at most `max_samples` per model.
- `throughput`: the swarm-wide tokens/s derived from the nodes' announced `tokens_served`
  counters, at most `max_samples`.

How tokens/s is derived from counters (`counter_rate`), per peer and model, between two
consecutive records of that peer (a newer `announced_at`):
- delta = tokens_served now - before; a counter that goes backwards means the node restarted, and
  the new value (tokens since the restart) is the delta;
- the interval is the records' announced_at difference, but at least the time this gateway saw
  pass between reading them minus the clock skew records may have (records.MAX_CLOCK_SKEW): a node
  cannot make its rate look larger by squeezing its timestamps;
- the delta is capped at what the node's own announced throughput allows over that interval, with
  BATCH_ALLOWANCE for prefill and batching (a decode step through a span computes one position per
  session; a prefill step many). A node announcing no throughput contributes nothing.
The peer's rate holds until its next record and ends when it departs. Every node counts the
positions that went through its span, so one token through a model of n blocks is counted by every
server of its chain: the swarm rate of a model is the sum of the peers' rates weighted by
span / n_blocks (tokens through the whole model), and the swarm rate is the sum over models.
These are claims (bounded, not verified): the dashboard labels them "announced".
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional

from swarmllm.client.routing import usable  # the same rule as the coverage /api/swarm shows now
from swarmllm.protocol.records import MAX_CLOCK_SKEW, ServerRecord, ServerState

BATCH_ALLOWANCE = 64.0  # x the announced decode tokens/s a node's counter may grow by (prefill, batching)


@dataclass(frozen=True)
class CounterReading:
    """One record's counter as this gateway read it."""

    announced_at: float   # the record's DHT time (a claim)
    seen_at: float        # when this gateway read it
    tokens_served: int
    throughput: float     # the node's announced decode tokens/s (the cap's base)


def counter_rate(before: CounterReading, after: CounterReading, allowance: float = BATCH_ALLOWANCE) -> float:
    """Tokens/s a node served between two consecutive readings of its counter, bounded (module docstring)."""
    interval = max(after.announced_at - before.announced_at, after.seen_at - before.seen_at - 2 * MAX_CLOCK_SKEW)
    if interval <= 0:
        return 0.0
    delta = after.tokens_served - before.tokens_served
    if delta < 0:  # the counter went backwards: the node restarted, counting from 0
        delta = after.tokens_served
    cap = max(0.0, after.throughput) * allowance * interval
    return min(float(delta), cap) / interval


class SwarmHistory:
    def __init__(self, max_events: int = 200, max_samples: int = 150):
        self.timeline: deque = deque(maxlen=max_events)
        self.throughput: deque = deque(maxlen=max_samples)
        self.coverage: dict[str, deque] = {}
        self.max_samples = max_samples
        self._online: dict[tuple[str, str], tuple[int, int]] = {}  # (peer, model) -> span, while online
        self._readings: dict[tuple[str, str], CounterReading] = {}
        self._rates: dict[tuple[str, str], tuple[float, float]] = {}  # -> (tokens/s through its span, span / n_blocks)
        self._observed = False

    def observe(self, records: Iterable[ServerRecord], n_blocks_of: Mapping[str, int], now: float) -> None:
        """Record one refresh's verified server records (one per peer and model)."""
        records = list(records)
        self._events(records, now)
        self._counters(records, n_blocks_of, now)
        self._coverage(records, n_blocks_of, now)
        self._observed = True

    def _event(self, kind: str, now: float, peer_id: str, model_id: str, span: tuple[int, int],
               reason: Optional[str] = None) -> None:
        self.timeline.append({"t": now, "kind": kind, "peer_id": peer_id, "model_id": model_id,
                              "start": span[0], "end": span[1], "initial": not self._observed,
                              **({"reason": reason} if reason else {})})

    def _events(self, records: list[ServerRecord], now: float) -> None:
        present = {(r.peer_id, r.model_id): r for r in records}
        for key, span in list(self._online.items()):
            r = present.get(key)
            if r is None or r.state == ServerState.LEAVING:
                self._event("departed", now, *key, span, "announced leaving" if r is not None else "records expired")
                del self._online[key]
        for key, r in sorted(present.items()):
            if r.state != ServerState.ONLINE:
                continue
            span = (r.start, r.end)
            if key not in self._online:
                self._event("joined", now, *key, span)
            elif self._online[key] != span:
                self._event("moved", now, *key, span)
            self._online[key] = span

    def _counters(self, records: list[ServerRecord], n_blocks_of: Mapping[str, int], now: float) -> None:
        present = set()
        for r in records:
            key = (r.peer_id, r.model_id)
            present.add(key)
            reading = CounterReading(r.announced_at, now, r.tokens_served, r.throughput)
            before = self._readings.get(key)
            if before is None or reading.announced_at > before.announced_at:
                if before is not None:
                    n_blocks = max(1, n_blocks_of.get(r.model_id, r.n_blocks))
                    self._rates[key] = (counter_rate(before, reading), (r.end - r.start) / n_blocks)
                self._readings[key] = reading
        for key in set(self._readings) - present:  # departed: its rate ends
            self._readings.pop(key, None)
            self._rates.pop(key, None)
        per_model: dict[str, float] = {}
        for (_, model_id), (rate, weight) in self._rates.items():
            per_model[model_id] = per_model.get(model_id, 0.0) + rate * weight
        self.throughput.append({"t": now, "tokens_per_second": round(sum(per_model.values()), 3),
                                "per_model": {m: round(v, 3) for m, v in sorted(per_model.items())}})

    def _coverage(self, records: list[ServerRecord], n_blocks_of: Mapping[str, int], now: float) -> None:
        for model_id, n_blocks in n_blocks_of.items():
            counts = [0] * n_blocks
            for r in records:
                if r.model_id == model_id and usable(r):
                    for b in range(max(0, r.start), min(n_blocks, r.end)):
                        counts[b] += 1
            self.coverage.setdefault(model_id, deque(maxlen=self.max_samples)).append({"t": now, "coverage": counts})
        for model_id in set(self.coverage) - set(n_blocks_of):  # nobody announces it any more
            del self.coverage[model_id]

    def node_rate(self, peer_id: str, model_id: str) -> Optional[float]:
        """The peer's tokens/s through its span from its counters (None before two readings)."""
        rate = self._rates.get((peer_id, model_id))
        return None if rate is None else rate[0]

    def to_json(self) -> dict:
        return {"timeline": list(self.timeline),
                "coverage_history": [{"model_id": m, "samples": list(s)} for m, s in sorted(self.coverage.items())],
                "announced_throughput_history": list(self.throughput)}
