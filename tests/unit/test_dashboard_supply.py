"""Demand against supply per model, as the dashboard shows it (gateway/swarm_status.model_supply)."""

from __future__ import annotations

from swarmllm.gateway.swarm_status import model_supply
from swarmllm.protocol.demand import DemandRecord
from swarmllm.protocol.records import ServerRecord, ServerState


def server(peer: str, start: int, end: int, throughput: float, state=ServerState.ONLINE) -> ServerRecord:
    return ServerRecord(peer_id=peer, model_id="m", start=start, end=end, n_blocks=4, throughput=throughput,
                        free_cache_tokens=1000, max_session_length=1000, state=state)


def demand(gateway: str, tokens_per_minute: float, requests: float = 1.0, queue: int = 0) -> DemandRecord:
    return DemandRecord(gateway_id=gateway, model_id="m", requests_per_minute=requests,
                        tokens_per_minute=tokens_per_minute, queue_length=queue, window=60.0, announced_at=0.0)


def test_supply_is_the_weakest_blocks_summed_throughput():
    records = [server("A", 0, 2, 10), server("B", 0, 2, 5), server("C", 2, 4, 4), server("D", 2, 4, 100,
                                                                                          ServerState.LEAVING)]
    out = model_supply("m", 4, records, [demand("g1", 100), demand("g2", 50, queue=3)])
    assert out["covered"] and out["supply_tokens_per_minute"] == 240.0  # block 2-3: C's 4 tok/s (D is leaving)
    assert out["demand_tokens_per_minute"] == 150 and out["gateways"] == 2 and out["queue_length"] == 3
    assert out["warning"] is None


def test_a_demanded_model_without_a_chain_is_flagged():
    out = model_supply("m", 4, [server("A", 0, 2, 10)], [demand("g", 10)])
    assert not out["covered"] and out["supply_tokens_per_minute"] == 0 and "not covered" in out["warning"]
    unseen = model_supply("m", 0, [], [demand("g", 10)])  # nobody announces the model at all
    assert not unseen["covered"] and "not covered" in unseen["warning"]


def test_demand_above_supply_is_flagged_and_no_demand_is_quiet():
    records = [server("A", 0, 4, 1)]
    assert "exceeds" in model_supply("m", 4, records, [demand("g", 61)])["warning"]
    assert model_supply("m", 4, records, [])["warning"] is None
