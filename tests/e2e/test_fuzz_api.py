"""Fuzz the HTTP API from its own OpenAPI document (schemathesis): no input gives a 5xx."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from swarmllm.harness.local_swarm import free_port

pytestmark = pytest.mark.integration


def test_openapi_document_matches_routes(gateway_swarm):
    _, url = gateway_swarm
    paths = httpx.get(f"{url}/openapi.json").json()["paths"]
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/api/swarm"} <= set(paths)
    assert "post" in paths["/v1/chat/completions"] and "get" in paths["/v1/models"]


@pytest.mark.extended  # the default suite is over its 20-minute line on CI: `pytest -m extended` runs it
def test_fuzzed_requests_never_get_a_server_error(gateway_swarm, tmp_path):
    swarm, _ = gateway_swarm
    port = free_port()
    # Short generations and no rate limit, so the fuzzer exercises validation, not patience.
    gateway = swarm.add_gateway(port, ["--max-new-tokens", "3", "--requests-per-minute", "100000",
                                       "--max-active", "4", "--max-queue", "64"], name="fuzz-gateway")
    swarm.wait_ready([gateway])
    schemathesis = Path(sys.executable).parent / "schemathesis"
    out = subprocess.run([str(schemathesis), "run", f"http://127.0.0.1:{port}/openapi.json", "--checks",
                          "not_a_server_error", "--max-examples", "5", "--generation-deterministic",
                          "--request-timeout", "60", "--exclude-path", "/api/swarm/stream"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    gateway.stop()
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "failed" not in out.stdout.split("Test cases:")[-1]
