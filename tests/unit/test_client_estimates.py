"""Speed estimates (pure): claims are capped priors, measurements take over, chains are attributed."""

from __future__ import annotations

import pytest

from swarmllm.client.estimates import HOP_OVERHEAD, SpeedEstimates, announced_block_seconds, capped_priors
from swarmllm.client.routing import plan_chain
from swarmllm.protocol import ServerRecord


def rec(peer, start, end, throughput=100.0):
    return ServerRecord(peer_id=peer, model_id="m", start=start, end=end, n_blocks=30, throughput=throughput,
                        free_cache_tokens=1000, max_session_length=4096)


def test_a_claim_is_never_faster_than_the_median_announcement():
    records = [rec("a", 0, 30), rec("b", 0, 30), rec("liar", 0, 30, throughput=1e9)]
    priors = capped_priors(records)
    assert priors["liar"] == priors["a"] == announced_block_seconds(records[0])
    slow = rec("slow", 0, 30, throughput=1.0)
    assert capped_priors(records + [slow])["slow"] == announced_block_seconds(slow)  # slower claims stand


def test_one_hop_measurement_replaces_the_prior():
    records = [rec("honest", 0, 30), rec("liar", 0, 30, throughput=1e9)]
    estimates = SpeedEstimates(smoothing=1.0)
    rtts = {"honest": 0.002, "liar": 0.002}
    priors = capped_priors(records)
    # The liar really takes 0.3 s per token over its 30 blocks.
    estimates.observe([("liar", 30)], 0.3 + 0.001 + HOP_OVERHEAD, rtts, priors)
    assert estimates.block_seconds(records)["liar"] == pytest.approx(0.01)
    assert [link.peer_id for link in plan_chain("m", 30, records, rtts,
                                                 block_seconds=estimates.block_seconds(records))] == ["honest"]


def test_a_slow_chain_scales_its_hops_and_overlapping_chains_separate_them():
    records = [rec("a", 0, 10), rec("b", 10, 30), rec("c", 0, 10)]
    priors = capped_priors(records)
    estimates = SpeedEstimates(smoothing=1.0)
    predicted = 10 * priors["a"] + 20 * priors["b"]
    estimates.observe([("a", 10), ("b", 20)], 4 * predicted + 2 * HOP_OVERHEAD, {"a": 0.0, "b": 0.0}, priors)
    scaled = estimates.block_seconds(records)
    assert scaled["a"] == pytest.approx(4 * priors["a"]) and scaled["b"] == pytest.approx(4 * priors["b"])
    assert scaled["c"] == priors["c"]  # never timed: its prior
    # c + b is as fast as predicted from b's new estimate: b really is slow, c is not.
    before_b = scaled["b"]
    estimates.observe([("c", 10), ("b", 20)], 10 * priors["c"] + 20 * before_b + 2 * HOP_OVERHEAD,
                      {"b": 0.0, "c": 0.0}, priors)
    assert estimates.block_seconds(records)["c"] == pytest.approx(priors["c"])
    estimates.observe([("x", 5)], 1.0, {}, priors)  # a hop with no record: ignored, no error
    assert "x" not in estimates.measured


def test_smoothing_and_forget():
    estimates = SpeedEstimates(smoothing=0.5)
    priors = {"a": 0.01}
    estimates.observe([("a", 1)], HOP_OVERHEAD + 0.085, {"a": 0.0}, priors)
    assert estimates.measured["a"] == pytest.approx(0.085)
    estimates.observe([("a", 1)], HOP_OVERHEAD + 0.045, {"a": 0.0}, priors)
    assert estimates.measured["a"] == pytest.approx(0.065) and estimates.observations["a"] == 2
    estimates.forget("a")
    assert estimates.block_seconds([]) == {}
