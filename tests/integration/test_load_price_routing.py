"""Price ceiling and load-aware routing in a real swarm (issue 14, items 3 and 5).

Swarm: two parallel chains of smollm2-135m, p0 [0, 15) + p1 [15, 30) and q0 [0, 15) + q1 [15, 30),
each node asking 1 credit per 1,000 tokens, and `dear` [0, 30) asking 10. Every node announces the
same --throughput, so without a ceiling the one-hop dear node is the fastest chain.
- several sessions opened at once, all with the same routing seed (so the tie-break does not
  spread them), end up on both chains, where speed-only routing puts them all on one;
- max_price 3 avoids the dear node; max_price 0.5 cannot be met: the client raises
  PriceUnavailableError naming the cheapest price (2), and the gateway answers 400
  "price_unavailable".
"""

from __future__ import annotations

import time

import httpx
import pytest

from swarmllm.client.routing import PriceUnavailableError, chain_price
from swarmllm.client.swarm_client import SwarmClient
from swarmllm.harness.local_swarm import LocalSwarm, free_port

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m"
NODES = {"p0": (0, 15, 1.0), "p1": (15, 30, 1.0), "q0": (0, 15, 1.0), "q1": (15, 30, 1.0), "dear": (0, 30, 10.0)}


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    s = LocalSwarm(MODEL, [], log_dir=tmp_path_factory.mktemp("price-load"))
    s.start(timeout=240)
    try:
        nodes = [s.add_node(a, b, name=name, extra_args=["--price", str(price), "--throughput", "50",
                                                         "--num-threads", "1"])
                 for name, (a, b, price) in NODES.items()]
        s.wait_ready(nodes, timeout=300)
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def peers(swarm) -> dict[str, str]:
    return {node.name: node.ready["peer_id"] for node in swarm.nodes}


@pytest.fixture(scope="module")
def client(swarm):
    with SwarmClient.connect(swarm.initial_peers, keep_state=False) as c:
        deadline = time.monotonic() + 60
        while len(c.find_servers(MODEL, 30)) < len(NODES) and time.monotonic() < deadline:
            time.sleep(1.0)
        yield c


def test_a_price_ceiling_avoids_dear_servers_and_says_when_none_can_serve(client, peers):
    fastest = client.plan(MODEL, 30)
    assert [link.peer_id for link in fastest] == [peers["dear"]]  # the one-hop chain, without a ceiling
    with client.open_session(MODEL, 30, 16, max_price=3.0) as session:
        assert peers["dear"] not in {link.peer_id for link in session.chain}
        assert chain_price(session.chain) == 2.0
    with pytest.raises(PriceUnavailableError) as caught:
        client.open_session(MODEL, 30, 16, max_price=0.5)
    assert caught.value.cheapest == 2.0 and "at least that" in str(caught.value)


def _first_hops(client: SwarmClient, n: int) -> list[str]:
    sessions = [client.open_session(MODEL, 30, 16, routing_seed=7, max_price=3.0) for _ in range(n)]
    try:
        return [s.chain[0].peer_id for s in sessions]
    finally:
        for s in sessions:
            s.close()


def test_concurrent_sessions_spread_across_parallel_chains(client, peers):
    client.load_aware = False
    try:
        speed_only = _first_hops(client, 4)
    finally:
        client.load_aware = True
    load_aware = _first_hops(client, 4)
    assert len(set(speed_only)) == 1  # same seed, same estimates: speed alone piles them onto one chain
    assert set(load_aware) == {peers["p0"], peers["q0"]}
    assert load_aware.count(peers["p0"]) == 2


def test_the_gateway_refuses_a_ceiling_no_chain_meets(swarm):
    port = free_port()
    gateway = swarm.add_gateway(port)
    swarm.wait_ready([gateway], timeout=120)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "max_price": 0.5}
    deadline = time.monotonic() + 60
    while True:
        response = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=60)
        if response.status_code != 503 and response.status_code != 404 or time.monotonic() > deadline:
            break
        time.sleep(1.0)  # the gateway has not read the swarm's records yet
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "price_unavailable" and "cheapest now costs 2" in error["message"]
