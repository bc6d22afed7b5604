"""Batched forward (`SpanModel.forward_many`) == each sequence run alone, bit for bit.

Servers batch the decode steps of concurrent sessions; failover replays and the comparison
of one step on two servers rely on a session's output not depending on which other sessions
shared its batch. These tests pin that down on the real SmolLM2 block shapes (the property
depends on the GEMM kernels, so tiny random shapes would not show it). If the equality ever
fails on another CPU or BLAS, see engine/row_tiles.py (and tests/unit/test_engine_row_tiles.py,
which checks it under kernel environments where the old padding scheme failed).
"""

from __future__ import annotations

import pytest
import torch

from swarmllm.engine.blocks import SequenceStep, SpanModel
from swarmllm.engine.generation import generate
from swarmllm.engine.head import ModelHead
from swarmllm.engine.sampling import SamplingParams
from swarmllm.models.catalog import resolve_model
from swarmllm.weights import load_blocks, load_head, read_config

DTYPES = [torch.float32, torch.bfloat16]


@pytest.fixture(scope="module")
def source():
    return resolve_model("smollm2-135m")


@pytest.fixture(scope="module")
def config(source):
    return read_config(source)


def span_of(source, config, dtype, start=0, end=4) -> SpanModel:
    return SpanModel(config, load_blocks(source, config, start, end, dtype), start, end, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_batched_steps_equal_each_sequence_alone(source, config, dtype):
    span = span_of(source, config, dtype)
    g = torch.Generator().manual_seed(0)
    n, steps = 6, 5
    prompts = [torch.randn(3 + 4 * i, 576, generator=g) for i in range(n)]
    tokens = [torch.randn(steps, 576, generator=g) for _ in range(n)]

    alone = []
    for prompt, new in zip(prompts, tokens):
        cache = span.new_cache(64)
        outputs = [span(prompt[None], cache, 0)[0]]
        outputs += [span(new[t:t + 1][None], cache, len(prompt) + t)[0] for t in range(steps)]
        alone.append(outputs)

    # Batched: sequence 0's prompt runs in one batch with the others' prompts; then decode
    # steps in batches whose membership, size and order change every step (a sequence left
    # out runs alone).
    caches = [span.new_cache(64) for _ in range(n)]
    batched = [[out] for out in span.forward_many([SequenceStep(p, c, 0) for p, c in zip(prompts, caches)])]
    for t in range(steps):
        members = [i for i in reversed(range(n)) if (i + t) % 3]
        outs = span.forward_many([SequenceStep(tokens[i][t:t + 1], caches[i], len(prompts[i]) + t) for i in members])
        for i, out in zip(members, outs):
            batched[i].append(out)
        for i in set(range(n)) - set(members):
            batched[i].append(span(tokens[i][t:t + 1][None], caches[i], len(prompts[i]) + t)[0])

    for i in range(n):
        assert caches[i].length == len(prompts[i]) + steps
        for t, (a, b) in enumerate(zip(alone[i], batched[i])):
            assert torch.equal(a, b), f"sequence {i}, output {t}: max diff {(a.float() - b.float()).abs().max()}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_batched_greedy_generation_equals_sequential(source, config, dtype):
    """Four prompts decoded together through all 30 blocks pick the same tokens as one by one."""
    span = span_of(source, config, dtype, 0, config.n_blocks)
    head = ModelHead(config, load_head(source, config, dtype), dtype)
    prompts = [[1, 504, 3287, 282], [9, 8, 7], [42] * 6, [100, 200, 300, 400, 500]]
    new_tokens = 6

    class NoEos:
        eos_token_ids: tuple[int, ...] = ()

        def decode(self, ids):
            return ""

    params = SamplingParams(max_new_tokens=new_tokens)
    expected = []
    for prompt in prompts:
        cache = span.new_cache(32)
        result = generate(head, NoEos(), lambda h, p, c=cache: span(h, c, p), prompt, params, 32)
        expected.append(result.token_ids)

    caches = [span.new_cache(32) for _ in prompts]
    outs = span.forward_many([SequenceStep(head.embed([p])[0], c, 0) for p, c in zip(prompts, caches)])
    got = [[int(head.logits(out[-1:][None])[0, -1].argmax())] for out in outs]
    for t in range(new_tokens - 1):
        outs = span.forward_many([SequenceStep(head.embed([[ids[-1]]])[0], c, len(p) + t)
                                  for ids, c, p in zip(got, caches, prompts)])
        for ids, out in zip(got, outs):
            ids.append(int(head.logits(out[None])[0, -1].argmax()))
    assert got == expected


def test_a_bad_step_fails_the_call_before_any_cache_changes(source, config):
    span = span_of(source, config, torch.float32, 0, 2)
    good, bad = span.new_cache(8), span.new_cache(8)
    span(torch.randn(1, 3, 576), good, 0)
    with pytest.raises(ValueError, match="gap"):
        span.forward_many([SequenceStep(torch.randn(1, 576), good, 3), SequenceStep(torch.randn(1, 576), bad, 2)])
    assert (good.length, bad.length) == (3, 0)
    with pytest.raises(ValueError, match="share a KV cache"):
        span.forward_many([SequenceStep(torch.randn(1, 576), good, 3), SequenceStep(torch.randn(1, 576), good, 3)])
    with pytest.raises(ValueError, match="forward_many"):
        span(torch.randn(2, 1, 576), good, 3)
