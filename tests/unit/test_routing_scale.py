"""Planning over many servers: pruning keeps plan_chain fast and near the exact shortest chain; the
vectorised block_coverage counts exactly what the loop over blocks counted."""

from __future__ import annotations

import random

import pytest

from swarmllm.client import routing
from swarmllm.client.routing import plan_chain
from swarmllm.protocol import ServerRecord
from swarmllm.server.block_selection import block_coverage


def swarm(n: int, blocks: int, seed: int) -> tuple[list[ServerRecord], dict[str, float]]:
    rng = random.Random(seed)
    records = []
    for i in range(n):
        length = rng.randint(3, blocks // 2)
        start = rng.randint(0, blocks - length)
        records.append(ServerRecord(peer_id=f"peer{i:05d}", model_id="m", start=start, end=start + length,
                                    n_blocks=blocks, throughput=rng.uniform(1, 60), free_cache_tokens=10**4,
                                    max_session_length=10**4, price=rng.choice([0.0, 0.0, 1.0, 3.0])))
    return records, {r.peer_id: rng.uniform(0.002, 0.25) for r in records}


def planned_cost(chain, records, rtts) -> float:
    """What plan_chain minimised: hop costs with the capped priors of all the records."""
    estimates = routing.capped_priors(records)
    return sum(routing.hop_cost(link.record, link.start, link.end, rtts, estimates) for link in chain)


@pytest.mark.parametrize("seed", range(12))
def test_a_pruned_plan_is_within_a_few_percent_of_the_exact_one(seed, monkeypatch):
    records, rtts = swarm(300, 60, seed)
    pruned = plan_chain("m", 60, records, rtts)
    monkeypatch.setattr(routing, "PRUNE_ABOVE", 10**9)
    exact = plan_chain("m", 60, records, rtts)
    assert planned_cost(pruned, records, rtts) <= 1.03 * planned_cost(exact, records, rtts)


def test_small_swarms_are_planned_exactly_as_before(monkeypatch):
    records, rtts = swarm(routing.PRUNE_ABOVE, 40, 7)
    calls = []
    monkeypatch.setattr(routing, "prune", lambda *a, **k: calls.append(1) or a[0])
    plan_chain("m", 40, records, rtts)
    assert calls == []


def test_pruning_keeps_a_price_ceiling_meetable():
    records, rtts = swarm(400, 50, 3)
    free = [r.model_copy(update={"price": 0.0, "throughput": 0.5}) for r in records[:4]]
    covering = [ServerRecord(peer_id=f"free{i}", model_id="m", start=a, end=b, n_blocks=50, throughput=0.5,
                             free_cache_tokens=10**4, max_session_length=10**4) for i, (a, b) in
                enumerate([(0, 25), (25, 50)])]
    expensive = [r.model_copy(update={"price": max(r.price, 5.0)}) for r in records]
    chain = plan_chain("m", 50, expensive + covering + free, rtts, max_price=0.0)
    assert routing.chain_price(chain) == 0.0


def reference_coverage(n_blocks, records):
    counts, throughput = [0] * n_blocks, [0.0] * n_blocks
    seen = set()
    for record in records:
        for block in range(max(0, record.start), min(n_blocks, record.end)):
            if (record.peer_id, block) not in seen:
                seen.add((record.peer_id, block))
                counts[block] += 1
                throughput[block] += record.throughput
    return counts, throughput


@pytest.mark.parametrize("seed", range(6))
def test_block_coverage_counts_what_the_loop_counted(seed):
    records, _ = swarm(200, 40, seed)
    records += [records[i].model_copy(update={"start": 0, "end": 12}) for i in range(0, 200, 17)]  # repeated peers
    counts, throughput = block_coverage(40, records)
    expected_counts, expected_throughput = reference_coverage(40, records)
    assert counts == expected_counts
    assert throughput == pytest.approx(expected_throughput, abs=1e-5)


@pytest.mark.parametrize("seed", range(8))
def test_the_linear_planner_finds_the_same_cost_as_the_exhaustive_one(seed):
    records, rtts = swarm(120, 50, seed)
    estimates = routing.capped_priors(records)
    loads = {r.peer_id: float(i % 3) for i, r in enumerate(records)}

    def cost(r, i, j):
        return routing.hop_cost(r, i, j, rtts, estimates, loads[r.peer_id]) * routing.tie_factor(seed, r.peer_id)

    def total(chain):
        return sum(cost(link.record, link.start, link.end) for link in chain)

    for start, end in ((0, 50), (7, 31)):
        covering = [r for r in records if r.start < end and start < r.end]
        if routing.missing_spans(50, covering, start, end):
            continue
        linear = routing._shortest_linear(covering, start, end, cost)
        assert [(l.start, l.end) for l in linear][0][0] == start and linear[-1].end == end
        assert all(a.end == b.start for a, b in zip(linear, linear[1:]))
        assert all(l.record.start <= l.start and l.end <= l.record.end for l in linear)
        exhaustive = routing._shortest(covering, start, end, cost)
        assert total(linear) == pytest.approx(total(exhaustive), rel=1e-9)
