"""Batching on servers: concurrent sessions through one swarm generate exactly what they do alone.

A 3-node swarm of its own (its nodes log at INFO, so the test can read how many steps ran in
how many batches and know that batching really happened).
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from swarmllm.client.generation import ClientModel
from swarmllm.client.swarm_client import SwarmClient
from swarmllm.engine.generation import generate
from swarmllm.engine.sampling import SamplingParams
from swarmllm.harness.local_swarm import LocalSwarm, even_spans

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m"
PROMPTS = ["Write a haiku about autumn.", "Why is the sky blue?", "Explain what a CPU does.",
           "Give me three tips for learning to cook."]
GREEDY = SamplingParams(max_new_tokens=16)


def generate_through(client: SwarmClient, model: ClientModel, prompt: str) -> list[int]:
    ids = model.prompt_ids(prompt)
    length = len(ids) + GREEDY.max_new_tokens
    with client.open_session(model.source.model_id, model.config.n_blocks, length) as session:
        return generate(model.head, model.tokenizer, session.forward, ids, GREEDY, length).token_ids


def batch_stats(swarm: LocalSwarm) -> list[tuple[int, int]]:
    """(steps, batches) each node logged when it stopped."""
    found = []
    for node in swarm.nodes:
        match = re.search(r"ran (\d+) steps in (\d+) batches", node.log_path.read_text(errors="replace"))
        assert match, f"{node.name} did not log its batch counts:\n{node.log_tail()}"
        found.append((int(match[1]), int(match[2])))
    return found


@pytest.mark.extended  # ~24 s; the default run keeps the engine's batched == sequential (unit/test_engine_batching.py)
# and concurrent sessions through the servers' batcher (test_chaos: 2 at a time; test_hostile_peers: a greedy peer)
def test_concurrent_sessions_generate_what_sequential_ones_do(tmp_path):
    model = ClientModel.load(MODEL)
    swarm = LocalSwarm(MODEL, even_spans(30, 3), log_dir=tmp_path, env={"SWARMLLM_LOG_LEVEL": "INFO"})
    swarm.start(timeout=240)
    try:
        with SwarmClient.connect(swarm.initial_peers) as client:
            sequential = [generate_through(client, model, p) for p in PROMPTS]
            with ThreadPoolExecutor(len(PROMPTS)) as pool:
                concurrent = list(pool.map(lambda p: generate_through(client, model, p), PROMPTS))
    finally:
        swarm.stop()
    assert all(len(ids) >= 8 for ids in sequential)
    assert concurrent == sequential
    stats = batch_stats(swarm)
    assert any(steps > batches for steps, batches in stats), f"no node ever batched two steps: {stats}"
