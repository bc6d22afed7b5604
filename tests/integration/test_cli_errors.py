"""Bad input through the CLI: one clear sentence on stderr, exit code 2, nothing crashes."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from swarmllm.harness.local_swarm import LocalSwarm

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m"


def swarmllm(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "swarmllm.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_unknown_model():
    out = swarmllm("generate", "--local", "--model", "no-such-model", "hi")
    assert out.returncode == 2
    assert "no-such-model" in out.stderr and "smollm2-135m" in out.stderr and "Traceback" not in out.stderr


def test_no_peers_reachable():
    out = swarmllm("generate", "--initial-peers",
                   "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWMgEutYBMJTK9N65WYqhGofbXwJ44yGw6R3Y7AhBwk45z", "hi")
    assert out.returncode == 2
    assert "could not join the swarm" in out.stderr and "Traceback" not in out.stderr


def test_prompt_longer_than_max_length():
    out = swarmllm("generate", "--local", "--max-length", "8", "a prompt that is much longer than eight tokens")
    assert out.returncode == 2
    assert "the prompt is" in out.stderr and "--max-length" in out.stderr


def test_port_in_use():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = swarmllm("bootstrap", "--host", "127.0.0.1", "--port", str(port), timeout=60)
    assert out.returncode == 2
    assert f"port {port}" in out.stderr and "already in use" in out.stderr


def test_up_with_its_gateway_port_taken_starts_nothing():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = swarmllm("up", "--nodes", "1", "--port", str(port), timeout=60)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        f"swarmllm up: error: port {port} on 127.0.0.1 is already in use (another `swarmllm up` or gateway?); "
        f"stop it or pass another --port, e.g. --port {port + 1}"]
    assert "starting a local swarm" not in out.stdout  # checked before anything started


def test_bad_blocks_argument():
    out = swarmllm("serve", "--initial-peers", "/ip4/127.0.0.1/tcp/9", "--blocks", "10-20")
    assert out.returncode == 2 and "START:END" in out.stderr


@pytest.fixture(scope="module")
def partial_swarm(tmp_path_factory):
    swarm = LocalSwarm(MODEL, [(0, 10)], log_dir=tmp_path_factory.mktemp("partial"))
    swarm.start(timeout=180)
    try:
        yield swarm
    finally:
        swarm.stop()


@pytest.mark.extended  # its own swarm (~20 s); routing's missing-blocks sentences are unit-tested (test_routing)
def test_missing_blocks_then_server_out_of_memory(partial_swarm):
    out = swarmllm("generate", "--initial-peers", ",".join(partial_swarm.initial_peers), "hi")
    assert out.returncode == 2
    assert "no online server hosts blocks [10, 30)" in out.stderr

    # A node whose KV budget holds ~30 positions of its 20 blocks: a longer session is refused up front.
    small = partial_swarm.add_node(10, 30, name="small", extra_args=("--cache-memory-mb", "1"))
    partial_swarm.wait_ready([small])
    for _ in range(3):  # the new record may take a moment to be visible
        out = swarmllm("generate", "--initial-peers", ",".join(partial_swarm.initial_peers), "--max-new-tokens", "64", "hi")
        if "no online server" not in out.stderr:
            break
    assert out.returncode == 2
    assert "not enough KV-cache memory" in out.stderr, out.stderr
    assert small.alive and partial_swarm.nodes[0].alive


@pytest.mark.extended  # the default run covers it: `swarmllm join` (test_join.py) and a LAN serve fill gaps
def test_serve_without_blocks_fills_the_gap(tmp_path):
    with LocalSwarm(MODEL, [(0, 10)], log_dir=tmp_path) as swarm:
        chooser = swarm.add_node(None, None, name="chooser", extra_args=("--num-blocks", "20"))
        swarm.wait_ready([chooser])
        assert (chooser.ready["start"], chooser.ready["end"]) == (10, 30)
