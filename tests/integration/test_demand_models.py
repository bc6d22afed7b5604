"""Many models, one swarm: a node without --model follows the gateways' demand; /v1/models lists both models."""

from __future__ import annotations

import time

import httpx
import pytest

from swarmllm.harness.local_swarm import LocalSwarm, free_port

pytestmark = pytest.mark.integration

SMOL, GEMMA = "smollm2-135m", "gemma3-270m"


def _wait_for_models(url: str, models: set, timeout: float = 90) -> set:
    deadline, listed = time.monotonic() + timeout, set()
    while time.monotonic() < deadline:
        try:
            listed = {m["id"] for m in httpx.get(f"{url}/v1/models", timeout=5).json()["data"]}
        except httpx.HTTPError:
            listed = set()
        if models <= listed:
            return listed
        time.sleep(0.5)
    raise AssertionError(f"{url}/v1/models listed {listed}, not {models}")


def test_a_node_without_model_serves_the_demanded_model_and_the_gateway_lists_both(tmp_path):
    with LocalSwarm(SMOL, [(0, 30)], log_dir=tmp_path, node_args=("--throughput", "20")) as swarm:
        port = free_port()
        swarm.wait_ready([swarm.add_gateway(port, ["--status-period", "1", "--demand-period", "1",
                                                   "--requests-per-minute", "1000"])], timeout=120)
        url = f"http://127.0.0.1:{port}"
        _wait_for_models(url, {SMOL})
        for _ in range(4):  # demand for smollm2 only
            reply = httpx.post(f"{url}/v1/completions", json={"model": SMOL, "prompt": "Hi", "max_tokens": 1},
                               timeout=120)
            assert reply.status_code == 200, reply.text
        time.sleep(3)  # two publications of the gateway's demand
        # Without demand a node would take the uncovered gemma3 (least served on disk); demand says smollm2.
        auto = swarm.add_node(None, None, name="auto", auto_model=True,
                              extra_args=("--num-blocks", "30", "--rebalance-period", "0"))
        swarm.wait_ready([auto], timeout=180)
        assert auto.ready["model"] == SMOL

        swarm.wait_ready([swarm.add_node(0, 18, name="gemma", extra_args=("--model", GEMMA))], timeout=180)
        assert _wait_for_models(url, {SMOL, GEMMA}) >= {SMOL, GEMMA}
