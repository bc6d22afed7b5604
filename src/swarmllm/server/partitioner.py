"""Automatic partitioning: which contiguous blocks each machine of a swarm should serve.

Pure functions. `swarmllm plan` prints `partition()` for a described set of machines, and a
node started without `--blocks` / `--num-blocks` sizes its span with `node_span_length()`,
the same rule applied to what it sees in the DHT.

Latency model (the one client routing optimises, see client/routing.py): one token through
a chain of hops costs

    latency = sum over hops i of ( rtt_i / 2 + HOP_OVERHEAD + k_i / r_i )

k_i = blocks node i runs, r_i = its speed in blocks/s (decode tokens/s through one block),
rtt_i/2 = the one-way delay into it (its round trip to its peers, halved), HOP_OVERHEAD = the
fixed cost of a hop (encode, decode, framing: 2 ms). A session's expected decode rate is
1 / latency of the chain it is routed through; the plan reports it for its fastest chain.
Not modelled: prefill, the client's own embedding/LM-head time, contention between
sessions sharing a node, and link bandwidth (a hop carries one hidden state per token).

Algorithm:
1. Capacity: a machine holds `(memory - kv_reserve) // block_bytes` blocks (weights are
   held dequantized in the compute dtype: 2 bytes per weight on a GPU, `cpu_weight_bytes`
   otherwise). If all machines together cannot hold the model once, `InsufficientMemoryError`
   says by how much.
2. Split within a chain: blocks are handed out one at a time to the machine whose stage time
   (k_i + 1) / r_i stays lowest among those with room. This minimises the slowest stage, so
   spans come out proportional to speed (up to rounding), clamped by memory: the slowest
   machine gets few blocks instead of setting everyone's pace. Balanced stages also
   maximise the chain's throughput when several sessions pipeline through it; a single
   session would be a little faster with the fastest machine filled first (e.g. speeds
   100 and 50 blocks/s, 25 blocks of room each, 30 blocks: 20/10 costs 0.40 s per token,
   25/5 costs 0.35 s) at the price of a 25 % slower bottleneck stage.
3. Which machines form a chain: the subset with the lowest latency (every subset for up to
   `EXHAUSTIVE_LIMIT` candidates, else the best prefix by speed). Each machine adds a hop,
   so a chain takes a machine only when its memory is needed or its speed pays for the hop.
4. Redundancy: while the machines left can hold the model again, they form another chain
   (another route at full speed, and a standby when a node of the first one fails).
   Machines that cannot complete a chain take the window that is worst served
   (`block_selection.choose_span`), sized like a node would size it (`node_span_length`).
"""

from __future__ import annotations

import heapq
import itertools
import re
import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from swarmllm.protocol import ServerRecord
from swarmllm.server.block_selection import choose_span

HOP_OVERHEAD = 0.002       # seconds per hop; the same constant as client/routing.py
EXHAUSTIVE_LIMIT = 10      # up to this many candidate machines, every subset is tried for a chain
DEFAULT_KV_RESERVE = 512 * 2**20  # `swarmllm serve`'s default --cache-memory-mb


class InsufficientMemoryError(ValueError):
    """The machines together cannot hold every block of the model once."""


@dataclass(frozen=True)
class Machine:
    name: str
    memory_bytes: int          # what the node may use: weights + KV cache
    block_rate: float          # blocks/s = decode tokens/s through one block
    rtt: float = 0.0           # seconds, round trip to its peers (0: same LAN, hop overhead only)
    gpu: bool = False          # weights held in 16 bits


@dataclass(frozen=True)
class Assignment:
    machine: Machine
    start: int
    end: int
    chain: int | None          # index of the chain it belongs to; None = an extra replica

    @property
    def blocks(self) -> int:
        return self.end - self.start

    @property
    def stage_seconds(self) -> float:
        return self.blocks / self.machine.block_rate


@dataclass(frozen=True)
class Plan:
    n_blocks: int
    block_weights: int                      # weights of the largest block
    assignments: tuple[Assignment, ...]
    chain_latencies: tuple[float, ...]      # seconds per token through each full chain
    idle: tuple[Machine, ...] = field(default=())  # machines that hold no block at all

    @property
    def tokens_per_second(self) -> float:
        """Decode tokens/s of one session routed through the fastest chain."""
        return 1.0 / min(self.chain_latencies)

    def chain(self, index: int) -> list[Assignment]:
        return [a for a in self.assignments if a.chain == index]

    def to_json(self, model_id: str) -> dict:
        """The plan as `swarmllm plan --json` prints it."""
        return {"model": model_id, "n_blocks": self.n_blocks, "block_weights": self.block_weights,
                "tokens_per_second": self.tokens_per_second, "chain_latencies_s": list(self.chain_latencies),
                "assignments": [{"name": a.machine.name, "start": a.start, "end": a.end, "chain": a.chain,
                                 "ms_per_token": a.stage_seconds * 1000} for a in self.assignments],
                "idle": [m.name for m in self.idle]}


def capacity_blocks(machine: Machine, block_weights: int, n_blocks: int, cpu_weight_bytes: int = 4,
                    kv_reserve: int = DEFAULT_KV_RESERVE) -> int:
    block_bytes = block_weights * (2 if machine.gpu else cpu_weight_bytes)
    return max(0, min(n_blocks, (machine.memory_bytes - kv_reserve) // block_bytes))


def split_chain(n_blocks: int, rates: Sequence[float], caps: Sequence[int]) -> list[int] | None:
    """Blocks per machine minimising the slowest stage (k_i / r_i), within caps; None if they do not fit."""
    if sum(caps) < n_blocks:
        return None
    counts = [0] * len(rates)
    heap = [(1 / rate, i) for i, (rate, cap) in enumerate(zip(rates, caps)) if cap > 0]
    heapq.heapify(heap)
    for _ in range(n_blocks):
        _, i = heapq.heappop(heap)
        counts[i] += 1
        if counts[i] < caps[i]:
            heapq.heappush(heap, ((counts[i] + 1) / rates[i], i))
    return counts


def chain_latency(machines: Sequence[Machine], counts: Sequence[int]) -> float:
    return sum(m.rtt / 2 + HOP_OVERHEAD + k / m.block_rate for m, k in zip(machines, counts) if k > 0)


def _best_chain(n_blocks: int, candidates: list[Machine], caps: dict[str, int]) -> tuple[list[Machine], list[int]] | None:
    """The lowest-latency subset of candidates that holds the model, with its split."""
    if sum(caps[m.name] for m in candidates) < n_blocks:
        return None
    if len(candidates) <= EXHAUSTIVE_LIMIT:
        subsets: Iterable[Sequence[Machine]] = (s for size in range(1, len(candidates) + 1)
                                                for s in itertools.combinations(candidates, size))
    else:
        by_speed = sorted(candidates, key=lambda m: -m.block_rate)
        subsets = (by_speed[:size] for size in range(1, len(by_speed) + 1))
    best = None
    for subset in subsets:
        counts = split_chain(n_blocks, [m.block_rate for m in subset], [caps[m.name] for m in subset])
        if counts is None:
            continue
        latency = chain_latency(subset, counts)
        if best is None or latency < best[0] - 1e-12:
            best = (latency, list(subset), counts)
    return None if best is None else (best[1], best[2])


def node_span_length(n_blocks: int, block_rate: float | None, max_blocks: int,
                     others: Iterable[ServerRecord]) -> int:
    """How many blocks a joining node should serve: as many as keep its stage time at the swarm's.

    A node's stage time is 1 / the tokens/s it announces for its whole span. Matching the
    median of the others' stage times gives a span proportional to the node's speed (twice
    as fast: twice the blocks), so a slow node does not become the chain's bottleneck and a
    fast one is not wasted. Without a speed or without others to compare with: a third of
    the model (the former fixed default). Always within [1, min(n_blocks, max_blocks)].
    """
    upper = max(1, min(n_blocks, max_blocks))
    stage_times = [1.0 / r.throughput for r in others if r.throughput > 0]
    if not block_rate or not stage_times:
        return max(1, min(upper, -(-n_blocks // 3)))
    return max(1, min(upper, round(block_rate * statistics.median(stage_times))))


def _records(assignments: Iterable[Assignment], n_blocks: int) -> list[ServerRecord]:
    return [ServerRecord(peer_id=a.machine.name, model_id="plan", start=a.start, end=a.end, n_blocks=n_blocks,
                         throughput=a.machine.block_rate / a.blocks, free_cache_tokens=0, max_session_length=1)
            for a in assignments]


def partition(machines: Sequence[Machine], n_blocks: int, block_weights: int, cpu_weight_bytes: int = 4,
              kv_reserve: int = DEFAULT_KV_RESERVE) -> Plan:
    """Assign contiguous spans to machines: full chains first (lowest latency), then replicas."""
    names = [m.name for m in machines]
    if len(set(names)) != len(names):
        raise ValueError(f"machine names must be unique; repeated: {sorted({n for n in names if names.count(n) > 1})}")
    for m in machines:
        if m.block_rate <= 0:
            raise ValueError(f"machine {m.name!r}: throughput must be positive, got {m.block_rate}")
    caps = {m.name: capacity_blocks(m, block_weights, n_blocks, cpu_weight_bytes, kv_reserve) for m in machines}
    if sum(caps.values()) < n_blocks:
        bytes_per_block = block_weights * cpu_weight_bytes
        raise InsufficientMemoryError(
            f"the machines can hold {sum(caps.values())} of the model's {n_blocks} blocks "
            f"({block_weights * 4 / 2**20:.1f} MiB per block in float32, {block_weights * 2 / 2**20:.1f} MiB in 16 bits, "
            f"plus {kv_reserve / 2**20:.0f} MiB of KV cache per machine); add machines or memory for at least "
            f"{(n_blocks - sum(caps.values())) * bytes_per_block / 2**30:.2f} GiB more")
    remaining = [m for m in machines if caps[m.name] > 0]
    assignments: list[Assignment] = []
    latencies: list[float] = []
    while (found := _best_chain(n_blocks, remaining, caps)) is not None:
        chain_machines, counts = found
        chosen = {m.name: k for m, k in zip(chain_machines, counts) if k > 0}
        start = 0
        for m in remaining:  # lay the chain out in the order the machines were listed
            if m.name in chosen:
                assignments.append(Assignment(m, start, start + chosen[m.name], len(latencies)))
                start += chosen[m.name]
        latencies.append(chain_latency(chain_machines, counts))
        remaining = [m for m in remaining if m.name not in chosen]
    for m in remaining:  # too few to complete another chain: reinforce the weakest blocks
        records = _records(assignments, n_blocks)
        length = node_span_length(n_blocks, m.block_rate, caps[m.name], records)
        start, end = choose_span(n_blocks, length, records)
        assignments.append(Assignment(m, start, end, None))
    idle = tuple(m for m in machines if caps[m.name] == 0)
    return Plan(n_blocks, block_weights, tuple(assignments), tuple(latencies), idle)


# --- describing machines (the input of `swarmllm plan`) ----------------------------------
_UNITS = {"": 2**30, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_memory(value: Any, where: str) -> int:
    """'16GB', '512 MiB', 8 (a bare number is GiB) -> bytes."""
    if isinstance(value, bool):
        raise ValueError(f"{where}: memory must be a size like '16GB' or '512MB', got {value!r}")
    if isinstance(value, (int, float)):
        return int(value * 2**30)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"{where}: memory must be a size like '16GB' or '512MB', got {value!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def parse_throughput(value: Any, where: str) -> float:
    """'120 blocks/s', '120 tokens/s' (through one block), or a bare number of blocks/s."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(blocks/s|tokens/s|block/s|token/s)?\s*", str(value))
    if not match:
        raise ValueError(f"{where}: throughput must look like '120 blocks/s' (decode tokens/s through one block), "
                         f"got {value!r}")
    return float(match.group(1))


def parse_machines(data: Any) -> list[Machine]:
    """Machines from a parsed YAML/JSON document: a list (or {'machines': [...]}) of mappings
    with name, memory (or memory_gb / memory_mb), throughput (blocks/s), optional rtt_ms, gpu."""
    if isinstance(data, Mapping) and "machines" in data:
        data = data["machines"]
    if not isinstance(data, list) or not data:
        raise ValueError("the machines file must hold a non-empty list of machines "
                         "(each with name, memory, throughput; optional rtt_ms, gpu)")
    machines = []
    for i, item in enumerate(data):
        where = f"machine #{i + 1}"
        if not isinstance(item, Mapping):
            raise ValueError(f"{where}: expected a mapping with name, memory, throughput, got {item!r}")
        known = {"name", "memory", "memory_gb", "memory_mb", "throughput", "rtt_ms", "gpu"}
        unknown = sorted(set(item) - known)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(map(str, unknown))}; known: {', '.join(sorted(known))}")
        name = str(item.get("name") or f"machine{i + 1}")
        where = f"machine {name!r}"
        if "memory" in item:
            memory = parse_memory(item["memory"], where)
        elif "memory_gb" in item:
            memory = parse_memory(f"{item['memory_gb']}GB", where)
        elif "memory_mb" in item:
            memory = parse_memory(f"{item['memory_mb']}MB", where)
        else:
            raise ValueError(f"{where}: missing memory (e.g. memory: 16GB)")
        if "throughput" not in item:
            raise ValueError(f"{where}: missing throughput (e.g. throughput: 120 blocks/s)")
        rate = parse_throughput(item["throughput"], where)
        if rate <= 0:
            raise ValueError(f"{where}: throughput must be positive, got {item['throughput']!r}")
        rtt_ms = item.get("rtt_ms", 0) or 0
        if not isinstance(rtt_ms, (int, float)) or isinstance(rtt_ms, bool) or rtt_ms < 0:
            raise ValueError(f"{where}: rtt_ms must be a number >= 0, got {rtt_ms!r}")
        machines.append(Machine(name, memory, rate, float(rtt_ms) / 1000, bool(item.get("gpu", False))))
    return machines


def format_plan(plan: Plan, model_id: str) -> str:
    lines = [f"plan for {model_id}: {plan.n_blocks} blocks, "
             f"{plan.block_weights / 1e6:.2f} M weights per block"]
    for a in plan.assignments:
        role = f"chain {a.chain + 1}" if a.chain is not None else "replica"
        lines.append(f"  {a.machine.name:<16} blocks [{a.start:>3}, {a.end:>3})  {a.blocks:>3} blocks  "
                     f"{a.stage_seconds * 1000:8.1f} ms/token  {role}")
    for m in plan.idle:
        lines.append(f"  {m.name:<16} (too little memory for one block: idle)")
    for i, latency in enumerate(plan.chain_latencies):
        lines.append(f"chain {i + 1}: {latency * 1000:.1f} ms per token = {1 / latency:.1f} tokens/s")
    lines.append(f"expected: {plan.tokens_per_second:.1f} tokens/s per session "
                 f"(sum over hops of rtt/2 + {HOP_OVERHEAD * 1000:.0f} ms + blocks / blocks-per-s)")
    return "\n".join(lines)
