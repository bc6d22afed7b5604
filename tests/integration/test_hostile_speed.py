"""A hostile node announces a throughput of 1e9 tokens/s (the most a valid record may claim) but
computes slowly: the client believes its own timings, not the claim (issue 11, trust
measurements, not announcements)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from swarmllm.client.estimates import announced_block_seconds
from swarmllm.client.generation import generate_text
from swarmllm.client.routing import plan_chain
from swarmllm.client.swarm_client import SwarmClient
from swarmllm.engine.sampling import SamplingParams
from swarmllm.harness.local_swarm import LocalSwarm

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m"
PROMPT = "Name three rivers."
SLOW_NODE = [sys.executable, str(Path(__file__).parents[1] / "hostile" / "slow_node.py"), "0.25"]


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    s = LocalSwarm(MODEL, [(0, 30)], log_dir=tmp_path_factory.mktemp("hostile-speed"))
    s.start(timeout=240)
    liar = s.add_node(0, 30, name="liar", extra_args=["--throughput", "1e9"], program=SLOW_NODE)
    try:
        s.wait_ready([liar], timeout=240)
        yield s
    finally:
        s.stop()


def test_a_slow_liar_is_measured_and_routed_around(swarm):
    honest, liar = (node.ready["peer_id"] for node in swarm.nodes)
    reference = generate_text(MODEL, PROMPT, SamplingParams(max_new_tokens=12))
    with SwarmClient.connect(swarm.initial_peers) as client:
        records = client.find_servers(MODEL, 30)
        while len(records) < 2:
            records = client.find_servers(MODEL, 30)
        rtts = client.ping(r.peer_id for r in records)
        claimed = {r.peer_id: announced_block_seconds(r) for r in records}
        # Believing the claim, routing would send every session to the liar ...
        assert [link.peer_id for link in plan_chain(MODEL, 30, records, rtts, block_seconds=claimed)] == [liar]
        # ... believing it only as far as the median announcement, the two tie until measured.
        # A session through the liar (as a tie or load spreading would give it) times it:
        with client.open_session(MODEL, 30, 16, chain=client.plan(MODEL, 30, exclude=[honest])) as session:
            hidden = torch.zeros(1, 1, 576)
            for position in range(4):
                session.forward(hidden, position)
        assert client.speeds.measured[liar] * 30 > 0.25  # at least its 0.25 s sleep per step, not 1e-9 s
        assert [link.peer_id for link in client.plan(MODEL, 30)] == [honest]
        result = generate_text(MODEL, PROMPT, SamplingParams(max_new_tokens=12), client=client)
    assert [hop.peer_id for hop in result.route] == [honest]
    assert result.token_ids == reference.token_ids
