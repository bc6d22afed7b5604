"""`swarmllm serve --model URL`: nodes fetch only their spans over HTTP ranges and serve them;
the output through the swarm equals the local engine's on the full file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from range_server import RangeServer  # tests/range_server.py

from swarmllm.harness.local_swarm import LocalSwarm
from swarmllm.models.catalog import resolve_model

pytestmark = pytest.mark.integration


def generate(*args):
    out = subprocess.run([sys.executable, "-m", "swarmllm.cli", "generate", "--max-new-tokens", "12", "--json", *args],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_nodes_serve_spans_fetched_from_a_url(tmp_path):
    model_file = resolve_model("smollm2-135m").path
    root = tmp_path / "www"
    root.mkdir()
    os.symlink(model_file, root / os.path.basename(model_file))
    cache = tmp_path / "cache"  # shared by both nodes and the client: the lock keeps it consistent
    with RangeServer(root) as server:
        url = f"{server.url}/{os.path.basename(model_file)}"
        with LocalSwarm(url, [(0, 12), (12, 30)], log_dir=tmp_path / "logs",
                        env={"SWARMLLM_CACHE": str(cache)}) as swarm:
            swarm_out = generate("--model", url, "--initial-peers", ",".join(swarm.initial_peers), "Hello!")
        local_out = generate("--local", "--model", model_file, "Hello!")
        assert swarm_out["token_ids"] == local_out["token_ids"]
        # Everything the swarm needed was fetched once: blocks [0, 30) + the head, never twice.
        tensor_ranges = sorted((s, e) for _, s, e in server.requests if s > 0)
        assert all(a[1] <= b[0] for a, b in zip(tensor_ranges, tensor_ranges[1:])), "a range was fetched twice"


@pytest.mark.extended  # the default run keeps test_nodes_serve_spans_fetched_from_a_url
def test_a_node_fetches_its_span_from_a_peer_that_holds_the_file(tmp_path):
    from swarmllm.download import tensor_manifest

    model_file = resolve_model("smollm2-135m").path
    root = tmp_path / "www"
    root.mkdir()
    os.symlink(model_file, root / os.path.basename(model_file))
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(tensor_manifest(model_file)))
    with RangeServer(root) as server:
        url = f"{server.url}/{os.path.basename(model_file)}"
        # The first node holds the whole file locally (same file name: same model id).
        with LocalSwarm(model_file, [(0, 30)], log_dir=tmp_path / "logs", env={"SWARMLLM_LOG_LEVEL": "INFO"}) as swarm:
            fetcher = swarm.add_node(10, 20, name="fetcher", extra_args=(
                "--model", url, "--model-manifest", str(manifest), "--download-dir", str(tmp_path / "cache")))
            swarm.wait_ready([fetcher])
            log = fetcher.log_path.read_text()
        # The URL gave only the header; the blocks' tensors came from the peer, checked by the manifest.
        assert all(start == 0 for _, start, _ in server.requests), server.requests
        assert "from peers" in log
