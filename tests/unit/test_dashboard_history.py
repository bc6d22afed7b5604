"""The dashboard's history (gateway/swarm_history.py): counter deltas, the timeline, coverage over time;
and the counters a node announces (server/counters.py) staying inside the record's bounds."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from swarmllm.gateway.swarm_history import BATCH_ALLOWANCE, CounterReading, SwarmHistory, counter_rate
from swarmllm.gateway.swarm_status import join_command
from swarmllm.protocol.invite import parse_invite
from swarmllm.protocol.records import MAX_COUNTER, ServerRecord, ServerState
from swarmllm.server.counters import NodeCounters

PEER = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"


def server(peer: str, start: int, end: int, *, tokens: int = 0, at: float = 0.0, throughput: float = 10.0,
           state=ServerState.ONLINE, n_blocks: int = 4) -> ServerRecord:
    return ServerRecord(peer_id=peer, model_id="m", start=start, end=end, n_blocks=n_blocks, throughput=throughput,
                        free_cache_tokens=1000, max_session_length=1000, state=state, announced_at=at,
                        tokens_served=tokens)


def reading(at: float, tokens: int, throughput: float = 10.0, seen: float | None = None) -> CounterReading:
    return CounterReading(at, at if seen is None else seen, tokens, throughput)


def test_counter_rate_is_the_delta_over_the_interval():
    assert counter_rate(reading(100, 1000), reading(105, 1050)) == pytest.approx(10.0)


def test_a_counter_going_backwards_is_a_restart_counted_from_zero():
    assert counter_rate(reading(100, 5000), reading(105, 30)) == pytest.approx(6.0)


def test_a_jump_is_capped_by_the_announced_throughput():
    lie = counter_rate(reading(100, 0, throughput=1.0), reading(105, 10**15, throughput=1.0))
    assert lie == pytest.approx(1.0 * BATCH_ALLOWANCE)
    assert counter_rate(reading(100, 0, throughput=0.0), reading(105, 50, throughput=0.0)) == 0.0


def test_squeezed_timestamps_do_not_inflate_the_rate():
    # The node claims 0.001 s between records, but this gateway saw 60 s pass between reading them.
    rate = counter_rate(reading(100.0, 0, seen=1000.0), reading(100.001, 600, seen=1060.0))
    assert rate <= 600 / 50 + 1e-9 and math.isfinite(rate)
    assert counter_rate(reading(100, 0), reading(100, 10)) == 0.0  # no time passed: nothing to say


def test_swarm_rate_counts_a_token_once_per_model():
    history = SwarmHistory()
    history.observe([server("A", 0, 2, tokens=0, at=0), server("B", 2, 4, tokens=0, at=0)], {"m": 4}, now=0)
    history.observe([server("A", 0, 2, tokens=50, at=5), server("B", 2, 4, tokens=50, at=5)], {"m": 4}, now=5)
    last = history.throughput[-1]
    assert last["tokens_per_second"] == pytest.approx(10.0)  # 10 tok/s through each half = 10 through the model
    assert history.node_rate("A", "m") == pytest.approx(10.0)
    history.observe([server("A", 0, 2, tokens=50, at=5)], {"m": 4}, now=7)  # B's records expired
    assert history.throughput[-1]["tokens_per_second"] == pytest.approx(5.0) and history.node_rate("B", "m") is None


def test_timeline_records_joins_moves_and_departures():
    history = SwarmHistory(max_events=5)
    history.observe([server("A", 0, 4)], {"m": 4}, now=1)
    history.observe([server("A", 0, 4), server("B", 0, 2, state=ServerState.JOINING)], {"m": 4}, now=2)
    history.observe([server("A", 0, 4), server("B", 0, 2)], {"m": 4}, now=3)
    history.observe([server("A", 0, 4), server("B", 2, 4)], {"m": 4}, now=4)
    history.observe([server("A", 0, 4, state=ServerState.LEAVING), server("B", 2, 4)], {"m": 4}, now=5)
    history.observe([server("A", 0, 4, state=ServerState.LEAVING)], {"m": 4}, now=6)
    events = [(e["t"], e["kind"], e["peer_id"], e.get("reason")) for e in history.timeline]
    assert events == [(1, "joined", "A", None), (3, "joined", "B", None), (4, "moved", "B", None),
                      (5, "departed", "A", "announced leaving"), (6, "departed", "B", "records expired")]
    assert history.timeline[0]["initial"] and not history.timeline[1]["initial"]
    history.observe([server("A", 0, 4)], {"m": 4}, now=7)  # back online: joins again; the oldest event drops
    assert len(history.timeline) == 5 and history.timeline[-1]["kind"] == "joined"
    assert history.timeline[0]["kind"] == "joined" and history.timeline[0]["peer_id"] == "B"


def test_coverage_history_is_bounded_and_follows_the_models():
    history = SwarmHistory(max_samples=3)
    for t in range(5):
        history.observe([server("A", 0, 2), server("B", 1, 4, state=ServerState.LEAVING)], {"m": 4}, now=t)
    samples = history.to_json()["coverage_history"][0]["samples"]
    assert [s["t"] for s in samples] == [2, 3, 4] and samples[-1]["coverage"] == [1, 1, 0, 0]
    history.observe([], {}, now=9)
    assert history.to_json()["coverage_history"] == []


def test_node_counters_fit_the_record_and_lies_are_refused():
    class Traffic:
        bytes_sent, bytes_received = 2**70, -5  # out of range either way: clamped, never an invalid record

    fields = NodeCounters().sample(tokens_served=12, traffic=Traffic())
    assert fields["tokens_served"] == 12 and fields["bytes_sent"] == MAX_COUNTER and fields["bytes_received"] == 0
    assert fields["memory_bytes"] > 0 and fields["uptime_seconds"] >= 0
    record = ServerRecord(peer_id="A", model_id="m", start=0, end=1, n_blocks=1, throughput=1, free_cache_tokens=1,
                          max_session_length=1, **fields)
    assert ServerRecord.model_validate_json(record.model_dump_json()) == record
    for bad in ({"cpu_percent": float("nan")}, {"tokens_served": -1}, {"bytes_sent": 2**63}, {"uptime_seconds": 1e12}):
        with pytest.raises(ValidationError):
            ServerRecord(peer_id="A", model_id="m", start=0, end=1, n_blocks=1, throughput=1, free_cache_tokens=1,
                         max_session_length=1, **bad)


def test_join_command_is_an_invite_to_the_gateways_peers():
    peer = f"/ip4/10.0.0.5/tcp/4000/p2p/{PEER}"
    join = join_command([peer], ["m"], now=1000.0)
    assert join["command"].startswith("swarmllm volunteer swarmllm1.") and join["note"] is None
    invite = parse_invite(join["token"], now=1000.0)
    assert list(invite.models) == ["m"] and any(PEER in p for p in invite.peers)
    assert join["by_address"] == f"swarmllm volunteer --initial-peers {peer}"
    assert join_command([])["command"] == "swarmllm volunteer" and join_command([])["token"] is None
