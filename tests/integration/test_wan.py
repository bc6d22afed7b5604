"""A swarm behind emulated WAN links (netem relays, "continent": 40 ms RTT, 50 Mbit/s).

Checks that libp2p really goes through the relays (every hop of a token pays the delay)
and that the output is still exactly the single-process output.
"""

from __future__ import annotations

import pytest

from swarmllm.client.generation import GenerationOptions, generate_text
from swarmllm.client.swarm_client import SwarmClient
from swarmllm.engine.sampling import SamplingParams
from swarmllm.harness.local_swarm import LocalSwarm, even_spans
from swarmllm.harness.netem import PROFILES

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m"
PROMPT = "Write a short story about a robot who learns to paint."
GREEDY = SamplingParams(max_new_tokens=16)
CONTINENT = PROFILES["continent"]


@pytest.fixture(scope="module")
def wan_swarm(tmp_path_factory):
    swarm = LocalSwarm(MODEL, even_spans(30, 3), network="continent", log_dir=tmp_path_factory.mktemp("wan"))
    swarm.start(timeout=180)
    try:
        yield swarm
    finally:
        swarm.stop()


@pytest.fixture(scope="module")
def client(wan_swarm):
    with SwarmClient.connect(wan_swarm.initial_peers) as c:
        yield c


def test_nodes_announce_their_relays(wan_swarm):
    for node in wan_swarm.nodes:
        relay_port = wan_swarm.relays[node.name].ready["port"]
        assert all(f"/tcp/{relay_port}/" in address for address in node.ready["addresses"])


def test_ping_rtt_is_at_least_the_profile_rtt(wan_swarm, client):
    for node in wan_swarm.nodes:
        rtt = client.ping([node.ready["peer_id"]], timeout=10).get(node.ready["peer_id"])
        assert rtt is not None and rtt >= CONTINENT.rtt_ms / 1000


def test_greedy_tokens_equal_local_and_every_hop_is_delayed(wan_swarm, client):
    local = generate_text(MODEL, PROMPT, GREEDY)
    remote = generate_text(MODEL, PROMPT, GenerationOptions(sampling=GREEDY, ring=False), client=client)
    assert remote.token_ids == local.token_ids
    # One token travels client -> A -> B -> C -> client: four one-way delays if all four legs pass a relay.
    assert 1 / remote.timings.decode_tokens_per_s >= 4 * CONTINENT.one_way_seconds
    # In a ring (the default) it travels A -> B -> C -> A: three.
    ring = generate_text(MODEL, PROMPT, GREEDY, client=client)
    assert ring.decoding == "ring" and ring.token_ids == local.token_ids
    assert 1 / ring.timings.decode_tokens_per_s >= 3 * CONTINENT.one_way_seconds


def test_int8_on_the_wire_through_the_relays(client):
    remote = generate_text(MODEL, PROMPT, GenerationOptions(sampling=GREEDY, wire_dtype="int8"), client=client)
    assert remote.generated_tokens == GREEDY.max_new_tokens and remote.text.strip()
