"""Chain routing: pick servers that cover blocks [0, n) with the least per-token latency.

Pure functions over `ServerRecord`s (who serves which blocks) and the client's own
estimates; no I/O.

Model of one token through a chain of hops h_1..h_k (server s_i running blocks [a_i, b_i)):
    latency = sum_i ( link(s_i) + (b_i - a_i) * block_seconds(s_i) )
where `link(s)` is half the measured client<->s RTT (a stand-in for the server->server link,
which the client cannot measure; unknown RTTs count `DEFAULT_RTT`) plus `HOP_OVERHEAD`,
the fixed cost of one more hop (encode, decode, framing), and `block_seconds(s)` is what the
client measured itself, or the announcement capped at the median announced speed for a
server it never timed (estimates.py). Shortest path over block boundaries 0..n, so
overlapping spans combine (a server may serve a sub-span).

Reputation and load spreading (hooks for client/reputation.py and verification):
- `exclude`: peers never used (failed, or banned for lying);
- `penalties`: {peer: p >= 0}, the peer's hop costs count (1 + p) times (low-score peers);
- `seed`: per-session randomness among equally good chains. Each peer's hop costs are scaled by
  a factor in [1, 1 + TIE_TOLERANCE) drawn from (seed, peer id), so chains whose costs differ by
  less than that (servers of one speed, RTTs within measurement noise) are chosen at random per
  session: load spreads, and every peer gets traffic and so gets checked. A chain more than
  TIE_TOLERANCE worse than the best is never chosen. seed None: deterministic, as before.
- `loads`: {peer: sessions it runs}, from load.server_loads (the client's own count of sessions it
  opened there, and the record's capped claim); a hop's compute counts load.load_factor(load) times,
  so concurrent sessions spread over parallel chains instead of piling onto the fastest.

Versions: a server is used only when its record's protocol range overlaps ours (protocol/versions.py);
when blocks are served only by servers of other versions, IncompatibleVersionsError (a MissingBlocksError)
names their versions and ours and says who must upgrade.

Scale: the shortest path costs about (servers x span length^2) hop prices; with 10,000 servers that
was 8 s per plan (measured by the simulator's scale runs, docs/design.md). Above PRUNE_ABOVE usable
servers, the planner first keeps, for every block, the KEEP_PER_BLOCK servers cheapest per block
computed there, the KEEP_PER_BLOCK cheapest with their hop's fixed cost (link + overhead) spread over
their span, and (with a price ceiling) the KEEP_PER_BLOCK cheapest per block in credits, and plans over
those. Below it nothing changes.

Price ceiling: a record's `price` is credits per 1,000 tokens for its span; a chain costs the sum
of its hops' prices. With `max_price`, servers dearer than it are never used, and if the fastest
chain of the rest still costs more, the cheapest chain is planned instead; if even that is over the
ceiling, PriceUnavailableError names the cheapest price the swarm can serve at now.
"""

from __future__ import annotations

import hashlib
import heapq
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional

from swarmllm.client.estimates import DEFAULT_RTT, HOP_OVERHEAD, capped_priors
from swarmllm.client.load import load_factor
import swarmllm
from swarmllm.protocol import ServerRecord, ServerState, SwarmError
from swarmllm.protocol.versions import OUR_RANGE, UPGRADE_COMMAND, overlaps, range_text


class MissingBlocksError(SwarmError):
    """No online server covers some blocks of the model."""

    def __init__(self, model_id: str, n_blocks: int, missing: list[tuple[int, int]],
                 unavailable: dict[str, str] | None = None):
        spans = ", ".join(f"[{a}, {b})" for a, b in missing)
        why = ""
        if unavailable:  # servers that do host those blocks but cannot be used now, and why
            why = "; known servers there are unavailable: " + ", ".join(
                f"{peer[-8:]} ({reason})" for peer, reason in sorted(unavailable.items()))
        super().__init__(f"no online server hosts blocks {spans} of {model_id} (of {n_blocks} blocks){why}; start a "
                         f"node with --blocks covering them, or wait for nodes to join")
        self.missing, self.unavailable = missing, dict(unavailable or {})


class IncompatibleVersionsError(MissingBlocksError):
    """Some blocks are served only by servers whose protocol range does not overlap ours."""

    def __init__(self, model_id: str, n_blocks: int, missing: list[tuple[int, int]],
                 servers: Iterable[ServerRecord]):
        servers = list(servers)
        theirs = sorted({(r.protocol_range, r.software_version) for r in servers})
        low, high = min(r.min_protocol_version for r in servers), max(r.protocol_version for r in servers)
        spans = ", ".join(f"[{a}, {b})" for a, b in missing)
        speak = ", ".join(f"{range_text(versions)} (swarmllm {software or 'unknown'})" for versions, software in theirs)
        if low > OUR_RANGE[1]:  # they are newer than anything we speak
            advice = f"upgrade swarmllm ({UPGRADE_COMMAND})"
        elif high < OUR_RANGE[0]:
            advice = "those servers must upgrade swarmllm"
        else:
            advice = "this client or those servers must upgrade swarmllm"
        SwarmError.__init__(self, f"no route to blocks {spans} of {model_id}: its servers speak protocol {speak} and "
                                  f"this client {range_text(OUR_RANGE)} (swarmllm {swarmllm.__version__}): {advice}")
        self.missing = missing
        self.unavailable = {r.peer_id: f"protocol {range_text(r.protocol_range)}" for r in servers}


class PriceUnavailableError(SwarmError):
    """Every chain that covers the model costs more than the request's max_price."""

    code = "price_unavailable"

    def __init__(self, model_id: str, max_price: float, cheapest: float):
        super().__init__(f"no chain of {model_id} serves at max_price {max_price:g} credits per 1,000 tokens; the "
                         f"cheapest now costs {cheapest:g}: raise max_price to at least that, or wait for cheaper "
                         "servers")
        self.max_price, self.cheapest = max_price, cheapest


@dataclass(frozen=True)
class ChainLink:
    """One hop of a chain: `record`'s server runs blocks [start, end)."""

    record: ServerRecord
    start: int
    end: int

    @property
    def peer_id(self) -> str:
        return self.record.peer_id


def compatible(record: ServerRecord) -> bool:
    """Whether we can talk to the server: its protocol range overlaps ours (protocol/versions.py)."""
    return overlaps(OUR_RANGE, record.protocol_range)


def usable(record: ServerRecord, max_length: int = 1) -> bool:
    return (record.state == ServerState.ONLINE and compatible(record)
            and record.max_session_length >= max_length)


def unavailable_reason(record: ServerRecord, max_length: int, excluded: set[str]) -> str:
    if record.peer_id in excluded:
        return "failed recently"
    if record.state != ServerState.ONLINE:
        return record.state.value
    if not compatible(record):
        return f"protocol {range_text(record.protocol_range)}"
    return f"sessions up to {record.max_session_length} tokens"


def missing_spans(n_blocks: int, records: Iterable[ServerRecord], start: int = 0,
                  end: int | None = None) -> list[tuple[int, int]]:
    """Maximal runs of blocks in [start, end) that no record covers."""
    end = n_blocks if end is None else end
    covered = [False] * n_blocks
    for r in records:
        for b in range(max(0, r.start), min(n_blocks, r.end)):
            covered[b] = True
    spans, b = [], start
    while b < end:
        if not covered[b]:
            a = b
            while b < end and not covered[b]:
                b += 1
            spans.append((a, b))
        else:
            b += 1
    return spans


def hop_cost(record: ServerRecord, start: int, end: int, rtts: Mapping[str, float],
             block_seconds: Mapping[str, float], load: float = 0.0) -> float:
    compute = (end - start) * block_seconds[record.peer_id] * load_factor(load)
    return rtts.get(record.peer_id, DEFAULT_RTT) / 2 + HOP_OVERHEAD + compute


def chain_price(chain: Iterable["ChainLink"]) -> float:
    """Credits per 1,000 tokens the chain's servers ask, in all."""
    return sum(link.record.price for link in chain)


PRUNE_ABOVE = 64     # usable servers beyond which plan_chain plans over the best few per block (docstring)
KEEP_PER_BLOCK = 4   # servers kept per block and per price when pruning
TIE_TOLERANCE = 0.05  # chains within 5% of the best cost count as equally good (module docstring)


def tie_factor(seed: Optional[int], peer_id: str, tolerance: float = TIE_TOLERANCE) -> float:
    """The per-session cost factor of a peer, in [1, 1 + tolerance); 1 without a seed."""
    if seed is None:
        return 1.0
    draw = int.from_bytes(hashlib.sha256(f"{seed}:{peer_id}".encode()).digest()[:8], "big") / 2**64
    return 1.0 + tolerance * draw


def plan_chain(model_id: str, n_blocks: int, records: Iterable[ServerRecord], rtts: Mapping[str, float] | None = None,
               *, block_seconds: Mapping[str, float] | None = None, max_length: int = 1, exclude: Iterable[str] = (),
               start: int = 0, end: int | None = None, penalties: Mapping[str, float] | None = None,
               seed: Optional[int] = None, loads: Mapping[str, float] | None = None,
               max_price: Optional[float] = None) -> list[ChainLink]:
    """Cheapest chain covering blocks [start, end) (default: the whole model).

    block_seconds: the client's estimate per peer (estimates.SpeedEstimates.block_seconds);
    peers missing from it are priced by their capped announcement. penalties, seed, loads and
    max_price: see the module docstring. Raises MissingBlocksError naming the gaps, or
    PriceUnavailableError. A sub-range is what failover asks for: a replacement for exactly the
    span of the servers that failed.
    """
    end = n_blocks if end is None else end
    rtts, loads = rtts or {}, loads or {}
    excluded = set(exclude)
    records = list(records)
    block_seconds = {**capped_priors(records), **(block_seconds or {})}
    candidates = [r for r in records if usable(r, max_length) and r.peer_id not in excluded]
    scale = {r.peer_id: (1.0 + max(0.0, (penalties or {}).get(r.peer_id, 0.0))) * tie_factor(seed, r.peer_id)
             for r in candidates}
    gaps = missing_spans(n_blocks, candidates, start, end)
    if gaps:
        # Where only the protocol version stands in the way, say so: which versions, and who must upgrade.
        other_versions = [r for r in records if not compatible(r) and r.peer_id not in excluded
                          and r.state == ServerState.ONLINE and r.max_session_length >= max_length]
        if not missing_spans(n_blocks, candidates + other_versions, start, end):
            raise IncompatibleVersionsError(model_id, n_blocks, gaps, [
                r for r in other_versions if any(r.start < b and a < r.end for a, b in gaps)])
        raise MissingBlocksError(model_id, n_blocks, gaps, {
            r.peer_id: unavailable_reason(r, max_length, excluded) for r in records
            if any(r.start < b and a < r.end for a, b in gaps)})

    def latency(r: ServerRecord, i: int, j: int) -> float:
        return hop_cost(r, i, j, rtts, block_seconds, loads.get(r.peer_id, 0.0)) * scale[r.peer_id]

    many = len(candidates) > PRUNE_ABOVE
    if many:
        candidates = prune(candidates, start, end, lambda r: latency(r, r.start, r.start),
                           lambda r: latency(r, r.start, r.start + 1) - latency(r, r.start, r.start),
                           priced=max_price is not None)

    if max_price is None:
        return _shortest(candidates, start, end, latency, many)
    affordable = [r for r in candidates if r.price <= max_price]
    if not missing_spans(n_blocks, affordable, start, end):
        chain = _shortest(affordable, start, end, latency, many)
        if chain_price(chain) <= max_price:
            return chain
    # The fastest affordable chain is over the ceiling (or there is none): the cheapest chain, speed breaking ties.
    cheapest = _shortest(candidates, start, end, lambda r, i, j: r.price + 1e-9 * latency(r, i, j), many)
    if chain_price(cheapest) <= max_price:
        return cheapest
    raise PriceUnavailableError(model_id, max_price, chain_price(cheapest))


def prune(candidates: list[ServerRecord], start: int, end: int, fixed, per_block, priced: bool = False,
          keep: int = KEEP_PER_BLOCK) -> list[ServerRecord]:
    """The servers worth planning over when there are many (module docstring): `fixed(r)` is a hop's cost
    before any block, `per_block(r)` what each block adds there."""
    def spread(r: ServerRecord) -> float:
        return per_block(r) + fixed(r) / max(1, min(r.end, end) - max(r.start, start))

    keys = [per_block, spread] + ([lambda r: r.price / max(1, r.end - r.start)] if priced else [])
    kept: set[str] = set()
    for key in keys:
        counts, full = [0] * (end - start), 0
        for r in sorted(candidates, key=lambda r: (key(r), r.peer_id)):
            lo, hi = max(r.start, start) - start, min(r.end, end) - start
            if any(counts[b] < keep for b in range(lo, hi)):
                kept.add(r.peer_id)
                for b in range(lo, hi):
                    counts[b] += 1
                    full += counts[b] == keep
                if full == end - start:
                    break
    return [r for r in candidates if r.peer_id in kept]


def _shortest(candidates: list[ServerRecord], start: int, end: int, cost, many: bool = False) -> list[ChainLink]:
    """Dijkstra over block boundaries; from boundary i a server covering i can take us to any j <= its end.
    `cost(record, i, j)` prices the hop; the candidates must cover [start, end). `many` (the swarm had more
    than PRUNE_ABOVE usable servers): the same answer by _shortest_linear, which needs far fewer hop prices."""
    if many:
        return _shortest_linear(candidates, start, end, cost)
    best: dict[int, float] = {start: 0.0}
    back: dict[int, tuple[int, ServerRecord]] = {}
    heap = [(0.0, start)]
    while heap:
        total, i = heapq.heappop(heap)
        if i == end:
            break
        if total > best.get(i, float("inf")):
            continue
        for r in candidates:
            if not (r.start <= i < r.end):
                continue
            for j in range(i + 1, min(r.end, end) + 1):
                c = total + cost(r, i, j)
                if c < best.get(j, float("inf")) - 1e-12:
                    best[j], back[j] = c, (i, r)
                    heapq.heappush(heap, (c, j))
    chain, j = [], end
    while j > start:
        i, r = back[j]
        chain.append(ChainLink(record=r, start=i, end=j))
        j = i
    return chain[::-1]


def estimated_latency(chain: list[ChainLink], rtts: Mapping[str, float] | None = None,
                      block_seconds: Mapping[str, float] | None = None) -> float:
    estimates = {**capped_priors(link.record for link in chain), **(block_seconds or {})}
    return sum(hop_cost(link.record, link.start, link.end, rtts or {}, estimates) for link in chain)


def _shortest_linear(candidates: list[ServerRecord], start: int, end: int, cost) -> list[ChainLink]:
    """_shortest for a cost linear in the hop's length (every price here: fixed part + blocks x per block).

    States: "at boundary i, free to pick a server" and "at boundary i, still on server r"; picking r at i
    costs its fixed part plus one block, staying on r one block more costs one block. About servers x span
    states instead of servers x span^2 hop prices (0.3 s -> a few ms per plan at 10,000 servers)."""
    fixed = [cost(r, r.start, r.start) for r in candidates]
    per_block = [cost(r, r.start, r.start + 1) - f for r, f in zip(candidates, fixed)]
    covering: dict[int, list[int]] = {}
    for index, r in enumerate(candidates):
        for block in range(max(r.start, start), min(r.end, end)):
            covering.setdefault(block, []).append(index)
    best: dict[tuple[int, int], float] = {(start, -1): 0.0}   # (boundary, server index or -1 for free)
    back: dict[tuple[int, int], tuple[int, int]] = {}
    heap = [(0.0, start, -1)]
    while heap:
        total, i, on = heapq.heappop(heap)
        if i == end:
            break
        if total > best.get((i, on), float("inf")):
            continue
        moves = [(total + fixed[k] + per_block[k], k) for k in covering.get(i, ())]  # start a hop on k
        if on >= 0 and candidates[on].start <= i < candidates[on].end:
            moves.append((total + per_block[on], on))                          # one block more on the same
        for c, k in moves:
            state = (i + 1, k)
            if c < best.get(state, float("inf")) - 1e-12:
                best[state], back[state] = c, (i, on)
                heapq.heappush(heap, (c, i + 1, k))
    finals = [(c, k) for (i, k), c in best.items() if i == end]
    _, k = min(finals)
    state, links = (end, k), []
    while state[0] > start:
        previous = back[state]
        links.append((previous[0], state[1]))
        state = previous
    chain: list[ChainLink] = []
    for i, k in reversed(links):   # consecutive blocks on one server form one hop
        if chain and chain[-1].record is candidates[k] and chain[-1].end == i:
            chain[-1] = ChainLink(record=candidates[k], start=chain[-1].start, end=i + 1)
        else:
            chain.append(ChainLink(record=candidates[k], start=i, end=i + 1))
    return chain
