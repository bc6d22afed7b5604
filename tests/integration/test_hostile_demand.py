"""A hostile gateway floods the swarm with demand for one model; it cannot make a model lose its last server.

Demand records are claims (docs/security.md): any peer may publish one, signed by its own key, and
a node started without --model weighs them (server/model_choice.py: capped per gateway, untrusted
gateways at a quarter). What demand can never do is uncover a model: a node that is the only server
of some block stays where it is, whatever is asked for elsewhere. Here the only smollm2 node (it
chose smollm2 from an honest gateway's demand) watches a hostile peer publish the largest demand the
protocol allows for gemma3, every second, over several of its rebalance periods; it must keep
serving smollm2, and the gateway must keep answering smollm2 requests.
"""

from __future__ import annotations

import time

import httpx
import pytest

from swarmllm.client.swarm_client import SwarmClient
from swarmllm.harness.local_swarm import LocalSwarm, free_port
from swarmllm.protocol.demand import MAX_QUEUE_LENGTH, MAX_REQUESTS_PER_MINUTE, MAX_TOKENS_PER_MINUTE

pytestmark = [pytest.mark.integration, pytest.mark.extended]  # the default suite is over its 20-minute line on CI: `pytest -m extended` runs it

SMOL, GEMMA = "smollm2-135m", "gemma3-270m"
REBALANCE = 2.0


def test_flooded_demand_cannot_take_a_models_last_server(tmp_path):
    with LocalSwarm(GEMMA, [(0, 18)], log_dir=tmp_path, node_args=("--throughput", "20")) as swarm:
        port = free_port()
        swarm.wait_ready([swarm.add_gateway(port, ["--status-period", "1", "--demand-period", "1",
                                                   "--requests-per-minute", "1000"])], timeout=120)
        url = f"http://127.0.0.1:{port}"
        for _ in range(3):  # honest demand for smollm2, which nobody serves yet (404, but counted)
            httpx.post(f"{url}/v1/completions", json={"model": SMOL, "prompt": "Hi", "max_tokens": 1}, timeout=60)
        time.sleep(2.5)
        auto = swarm.add_node(None, None, name="auto", auto_model=True,
                              extra_args=("--num-blocks", "30", "--rebalance-period", str(REBALANCE)))
        swarm.wait_ready([auto], timeout=180)
        assert auto.ready["model"] == SMOL

        with SwarmClient.connect(swarm.initial_peers) as hostile:
            flood = [(GEMMA, MAX_REQUESTS_PER_MINUTE, MAX_TOKENS_PER_MINUTE, MAX_QUEUE_LENGTH),
                     (SMOL, 0.0, 0.0, 0)]
            deadline = time.monotonic() + 6 * REBALANCE + 4
            while time.monotonic() < deadline:
                assert hostile.publish_demand(flood, 60.0)  # valid, signed, and a lie
                time.sleep(1.0)
            servers = hostile.find_servers(SMOL, 30)
        assert auto.alive
        assert [r.peer_id for r in servers if r.state.value == "online"] == [auto.ready["peer_id"]]
        assert "moving from" not in auto.log_path.read_text()
        reply = httpx.post(f"{url}/v1/completions", json={"model": SMOL, "prompt": "Hi", "max_tokens": 2}, timeout=120)
        assert reply.status_code == 200, reply.text
