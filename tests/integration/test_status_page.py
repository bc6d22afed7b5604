"""A real node's status page (`swarmllm serve --status-port`, server/status_http.py) counts a real
generation: two node processes over the real P2P stack, a `swarmllm generate` through both, and the
first node's /api/node read over HTTP before and after."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from swarmllm.harness.local_swarm import LocalSwarm, free_port

pytestmark = [pytest.mark.integration, pytest.mark.extended]  # the default suite is over its 20-minute line on CI: `pytest -m extended` runs it
MODEL = "smollm2-135m"


def read_node(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/node", timeout=10) as reply:
        return json.loads(reply.read())


def test_a_generation_shows_on_the_nodes_status_page(tmp_path):
    swarm = LocalSwarm(MODEL, [(15, 30)], log_dir=tmp_path / "swarm")
    swarm.start(timeout=180)
    try:
        port = free_port()
        node = swarm.add_node(0, 15, name="watched", extra_args=["--status-port", str(port)])
        swarm.wait_ready([node], timeout=180)
        before = read_node(port)
        assert before["state"] == "serving" and before["peer_id"] == node.ready["peer_id"]
        assert (before["model"], before["start"], before["end"]) == (MODEL, 0, 15)
        assert before["uptime_seconds"] > 0 and before["credits"] == {"total": 0, "by_gateway": {}}

        out = subprocess.run([sys.executable, "-m", "swarmllm.cli", "generate", "--model", MODEL, "--initial-peers",
                              ",".join(swarm.initial_peers), "--no-lan", "--max-new-tokens", "6", "--temperature", "0",
                              "--json", "The capital of France is"], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "SWARMLLM_HOME": str(tmp_path / "client")})
        assert out.returncode == 0, out.stderr[-2000:]
        generated = len(json.loads(out.stdout)["token_ids"])

        after = read_node(port)
        assert after["sessions_served"] == before["sessions_served"] + 1
        assert after["steps_served"] - before["steps_served"] == generated  # the prompt's step, one per token fed back
        assert after["tokens_served"] - before["tokens_served"] >= generated + 3  # the prompt's positions, then one each
        assert after["uptime_seconds"] > before["uptime_seconds"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:
            assert b'id="root"' in page.read()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/api/node", data=b"x"), timeout=10)
        assert refused.value.code == 405
        assert read_node(port)["state"] == "serving"  # the refusal did not hurt it

        node.signal(15)  # SIGTERM: it drains; the page stays up until it has left
        deadline, states = time.monotonic() + 20, set()
        while time.monotonic() < deadline:
            try:
                states.add(read_node(port)["state"])
            except (urllib.error.URLError, ConnectionError):
                break  # the node has gone, and its page with it
            time.sleep(0.2)
        else:
            pytest.fail("the node's status page was still up 20 s after SIGTERM")
        assert "draining" in states
    finally:
        swarm.stop()
