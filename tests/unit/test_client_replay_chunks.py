"""A session's recorded chunks replay to bit-identical caches after speculative rollbacks.

The client records each committed step in `InferenceSession.chunks`; a verify step cut after
rejected drafts is recorded as its accepted length. A failover replays the chunks on a fresh
server. Here the real chunk bookkeeping (`commit`) drives a real span of SmolLM2 blocks."""

from __future__ import annotations

import pytest
import torch

from swarmllm.client.session import InferenceSession
from swarmllm.engine.blocks import SpanModel
from swarmllm.models.catalog import resolve_model
from swarmllm.weights import load_blocks, read_config


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_chunks_after_rollbacks_replay_exactly(dtype):
    source = resolve_model("smollm2-135m")
    config = read_config(source)
    span = SpanModel(config, load_blocks(source, config, 0, 3, dtype), 0, 3, dtype)
    g = torch.Generator().manual_seed(0)
    session = InferenceSession(swarm=None, model_id="m", chain=[], max_length=96)
    sent_inputs = torch.empty(96, 576)  # what the client keeps (session.inputs): later steps overwrite
    cache = span.new_cache(96)
    # (start, positions): a prefill, then verify steps of 1 + k positions, each starting after
    # what the previous one kept: 1 row (all drafts rejected), some, or all of them
    steps = [(0, 20), (20, 5), (21, 9), (24, 2), (26, 9), (35, 16), (36, 1), (37, 4), (39, 6)]
    for start, n in steps:
        hidden = torch.randn(1, n, 576, generator=g)  # the rejected drafts' rows differ from what comes later
        span(hidden, cache, start)
        sent_inputs[start:start + n] = hidden[0]
        session.commit(start, n)
    assert session.rollbacks == 4 and session.position == 45 == cache.length
    replayed = span.new_cache(96)  # a failover replays the chunks from the kept inputs
    position = 0
    for length in session.chunks:
        span(sent_inputs[position:position + length][None], replayed, position)
        position += length
    assert position == 45
    assert torch.equal(cache.keys[:, :, :, :45], replayed.keys[:, :, :, :45])
    assert torch.equal(cache.values[:, :, :, :45], replayed.values[:, :, :, :45])
