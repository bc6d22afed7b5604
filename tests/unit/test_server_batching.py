"""StepBatcher (no network): steps ready together run as one batch, errors stay per step."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from swarmllm.engine.blocks import SpanModel
from swarmllm.models.catalog import resolve_model
from swarmllm.server.batching import StepBatcher
from swarmllm.weights import load_blocks, read_config


class Cache:
    """Stands for a session's KV cache (the batcher only uses its identity)."""


class FakeModel:
    """Records the batches it runs; the first one blocks until released, so others queue up."""

    def __init__(self):
        self.batches: list[list[int]] = []
        self.release = threading.Event()

    def forward_many(self, steps):
        if not self.batches:
            self.release.wait(5)
        self.batches.append([step.start_position for step in steps])
        if any(step.start_position < 0 for step in steps):
            raise ValueError("bad step")
        return [step.hidden * 2 for step in steps]


def run_all(batcher, calls, release=()):
    """Hand in the first call, then (while it computes) the others; then release the models."""
    async def main():
        tasks = [asyncio.create_task(batcher.run(*calls[0]))]
        await asyncio.sleep(0.05)
        tasks += [asyncio.create_task(batcher.run(*call)) for call in calls[1:]]
        await asyncio.sleep(0.05)
        for model in release:
            model.release.set()
        return await asyncio.gather(*tasks, return_exceptions=True)
    return asyncio.run(main())


@pytest.fixture
def executor():
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool


def test_steps_queued_while_the_thread_is_busy_run_as_one_batch(executor):
    model = FakeModel()
    batcher = StepBatcher(executor, max_batch=3)
    calls = [(model, torch.full((1, 2), float(i)), Cache(), i) for i in range(6)]
    results = run_all(batcher, calls, release=[model])
    # The first runs alone at once (no waiting for company), then the queue in batches of <= 3.
    assert model.batches == [[0], [1, 2, 3], [4, 5]]
    assert [r[0][0, 0].item() for r in results] == [2.0 * i for i in range(6)]
    assert (batcher.steps_run, batcher.batches_run) == (6, 3)


def test_steps_of_different_spans_are_not_mixed(executor):
    first, other = FakeModel(), FakeModel()
    other.release.set()
    batcher = StepBatcher(executor)
    calls = [(first, torch.zeros(1, 2), Cache(), 0), (other, torch.zeros(1, 2), Cache(), 1),
             (first, torch.zeros(1, 2), Cache(), 2), (other, torch.zeros(1, 2), Cache(), 3)]
    run_all(batcher, calls, release=[first])
    assert first.batches == [[0], [2]] and other.batches == [[1, 3]]


def test_a_failing_step_fails_alone_and_its_batch_mates_get_their_outputs(executor):
    model = FakeModel()
    batcher = StepBatcher(executor)
    calls = [(model, torch.ones(1, 2), Cache(), p) for p in (0, 1, -1, 2)]
    results = run_all(batcher, calls, release=[model])
    assert isinstance(results[2], ValueError)
    assert all(isinstance(results[i], tuple) for i in (0, 1, 3))
    assert model.batches == [[0], [1, -1, 2], [1], [-1], [2]]  # the failed batch re-run one by one


def test_real_span_batch_with_a_broken_cache_keeps_the_others_exact(executor):
    """A step whose cache would leave a gap fails; the batch-mates equal their solo runs."""
    source = resolve_model("smollm2-135m")
    config = read_config(source)
    span = SpanModel(config, load_blocks(source, config, 0, 2), 0, 2)
    g = torch.Generator().manual_seed(1)
    inputs = [torch.randn(1, 576, generator=g) for _ in range(3)]
    solo = [span(x[None], span.new_cache(4), 0)[0] for x in inputs]
    caches = [span.new_cache(4) for _ in range(3)]
    batcher = StepBatcher(executor)
    results = run_all(batcher, [(span, inputs[0], caches[0], 0), (span, inputs[1], caches[1], 2),
                                (span, inputs[2], caches[2], 0)])
    assert isinstance(results[1], ValueError) and "gap" in str(results[1])
    assert torch.equal(results[0][0], solo[0]) and torch.equal(results[2][0], solo[2])
    assert [c.length for c in caches] == [1, 0, 1]


class InstantModel:
    def __init__(self):
        self.batches: list[list[int]] = []

    def forward_many(self, steps):
        self.batches.append([step.start_position for step in steps])
        return [step.hidden for step in steps]


def test_a_lone_session_never_waits_for_company(executor):
    model, cache = InstantModel(), Cache()
    batcher = StepBatcher(executor, max_wait=30.0)  # waiting even once would time the test out

    async def main():
        for position in range(5):
            await asyncio.wait_for(batcher.run(model, torch.zeros(1, 2), cache, position), 5)
    asyncio.run(main())
    assert model.batches == [[0], [1], [2], [3], [4]]


def test_a_step_waits_briefly_for_the_other_active_sessions(executor):
    model, first, second = InstantModel(), Cache(), Cache()
    batcher = StepBatcher(executor, max_wait=5.0)

    async def main():
        await asyncio.gather(batcher.run(model, torch.zeros(1, 2), first, 0),
                             batcher.run(model, torch.zeros(1, 2), second, 10))  # both sessions are active now

        async def late():
            await asyncio.sleep(0.1)
            return await batcher.run(model, torch.zeros(1, 2), second, 11)
        await asyncio.wait_for(asyncio.gather(batcher.run(model, torch.zeros(1, 2), first, 1), late()), 4)
    asyncio.run(main())
    assert model.batches == [[0, 10], [1, 11]]  # the second pair waited for its late member, not for max_wait


def test_lower_priority_steps_go_first_and_equals_keep_their_order(executor):
    """The session service passes a peer's compute debt: the steps of peers within their share
    jump the queue of a peer that used more, and batch with each other as before."""
    model = FakeModel()
    batcher = StepBatcher(executor, max_batch=2, max_wait=0)
    calls = [(model, torch.zeros(1, 2), Cache(), 0, 0.0),   # computing while the others queue
             (model, torch.zeros(1, 2), Cache(), 1, 5.0),   # a peer in debt
             (model, torch.zeros(1, 2), Cache(), 2, 5.0),
             (model, torch.zeros(1, 2), Cache(), 3, 0.0),   # peers within their share
             (model, torch.zeros(1, 2), Cache(), 4, 0.0)]
    run_all(batcher, calls, release=[model])
    assert model.batches == [[0], [3, 4], [1, 2]]
