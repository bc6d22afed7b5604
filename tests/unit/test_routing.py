"""Routing (pure): chains cover [0, n), prefer fast and near servers, name the gaps."""

import pytest

from swarmllm.client.routing import MissingBlocksError, plan_chain
from swarmllm.protocol import ServerRecord, ServerState


def rec(peer, start, end, throughput=100.0, state=ServerState.ONLINE, n=30, max_len=4096):
    return ServerRecord(peer_id=peer, model_id="m", start=start, end=end, n_blocks=n, throughput=throughput,
                        free_cache_tokens=1000, max_session_length=max_len, state=state)


def spans(chain):
    return [(link.peer_id, link.start, link.end) for link in chain]


def test_three_disjoint_spans():
    chain = plan_chain("m", 30, [rec("c", 20, 30), rec("a", 0, 10), rec("b", 10, 20)])
    assert spans(chain) == [("a", 0, 10), ("b", 10, 20), ("c", 20, 30)]


def test_overlapping_fourth_node_is_used_or_ignored_consistently():
    records = [rec("a", 0, 10), rec("b", 10, 20), rec("c", 20, 30), rec("d", 5, 25)]
    chain = plan_chain("m", 30, records, {p: 0.001 for p in "abcd"})
    assert chain[0].start == 0 and chain[-1].end == 30
    assert all(x.end == y.start for x, y in zip(chain, chain[1:]))
    for link in chain:
        assert link.record.start <= link.start < link.end <= link.record.end


def test_fewer_hops_when_latency_dominates():
    records = [rec("a", 0, 10), rec("b", 10, 20), rec("c", 20, 30), rec("big", 0, 30, throughput=50)]
    chain = plan_chain("m", 30, records, {"a": 0.1, "b": 0.1, "c": 0.1, "big": 0.1})
    assert spans(chain) == [("big", 0, 30)]


def test_slow_server_avoided():
    records = [rec("slow", 0, 30, throughput=0.5), rec("a", 0, 15), rec("b", 15, 30)]
    chain = plan_chain("m", 30, records, {"slow": 0.001, "a": 0.001, "b": 0.001})
    assert [link.peer_id for link in chain] == ["a", "b"]


def test_missing_blocks_named():
    with pytest.raises(MissingBlocksError) as info:
        plan_chain("m", 30, [rec("a", 0, 10), rec("c", 20, 28)])
    assert info.value.missing == [(10, 20), (28, 30)]
    assert "[10, 20)" in str(info.value) and "[28, 30)" in str(info.value)


def test_leaving_excluded_and_short_servers_skipped():
    records = [rec("a", 0, 30, state=ServerState.LEAVING), rec("b", 0, 30, max_len=16), rec("c", 0, 30)]
    assert [link.peer_id for link in plan_chain("m", 30, records, max_length=100)] == ["c"]
    with pytest.raises(MissingBlocksError) as info:
        plan_chain("m", 30, records, max_length=100, exclude=["c"])
    # The error says who hosts the blocks and why each cannot be used.
    assert info.value.unavailable == {"a": "leaving", "b": "sessions up to 16 tokens", "c": "failed recently"}
    assert "(failed recently)" in str(info.value)


def test_sub_range_for_failover():
    records = [rec("a", 0, 10), rec("b", 10, 20), rec("b2", 10, 20), rec("c", 20, 30)]
    chain = plan_chain("m", 30, records, start=10, end=20, exclude=["b"])
    assert spans(chain) == [("b2", 10, 20)]
    with pytest.raises(MissingBlocksError) as info:
        plan_chain("m", 30, records, start=10, end=20, exclude=["b", "b2"])
    assert info.value.missing == [(10, 20)]
