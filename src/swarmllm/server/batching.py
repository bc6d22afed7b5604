"""Continuous batching of the steps of concurrent sessions on a node's compute thread.

Sessions hand in validated steps (`StepBatcher.run`); whenever the compute thread is free,
everything queued for the same span (up to `max_batch` steps and `max_batch_positions`
positions) runs as one `SpanModel.forward_many`; the steps that arrive while a batch
computes form the next batch. A lone session's step starts as soon as the thread is free,
exactly as without batching. The next batch starts with the queued step of lowest `priority`
(arrival order among equals; the session service passes the opener's compute debt, so the
steps of peers within their share go before those of a peer that used more, see quotas.py).
When other sessions are active on this node, the batcher first
waits a moment (at most `max_wait`) for their steps: in a pipeline, sessions drift apart
into a stagger where each node sees one step at a time, and a short wait lets them travel
together again (in benchmarks/batching.py on 2 cores, 1 to 8 sessions: 1.6 steps per batch
on average without the wait, 2.1 with 5 ms).

Promises:
- a session's output is the same whichever steps share its batch (see
  engine/row_tiles.py), so batching changes no token and replays stay exact;
- errors are per step: if a batch raises, its steps are re-run one at a time, so only the
  step at fault fails and the others get their (identical) outputs;
- one batch at a time, on the given single-thread executor.
No networking and no validation here: the session service validates a step before it is
handed in and dispatches each output to the session's next hop or client.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass

import torch

from swarmllm.engine.blocks import SequenceStep, SpanModel
from swarmllm.engine.kv_cache import KVCache

logger = logging.getLogger(__name__)


@dataclass
class _Queued:
    model: SpanModel  # the (sub-)span the step runs through; only steps of one model share a batch
    step: SequenceStep
    future: asyncio.Future  # -> (output [T, D], seconds the batch computed)
    priority: float = 0.0   # lower goes first; equal ones in arrival order


class StepBatcher:
    def __init__(self, executor: Executor, max_batch: int = 16, max_batch_positions: int = 1024,
                 max_wait: float = 0.005, active_seconds: float = 1.0):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.executor, self.max_batch, self.max_batch_positions = executor, max_batch, max_batch_positions
        self.max_wait = max_wait if max_batch > 1 else 0.0
        self.active_seconds = active_seconds  # a session that stepped this recently is expected to step again
        self._queue: deque[_Queued] = deque()
        self._last_step: weakref.WeakKeyDictionary[KVCache, float] = weakref.WeakKeyDictionary()  # per session
        self._arrived = asyncio.Event()
        self._drainer: asyncio.Task | None = None  # runs batches while steps are queued
        self.batches_run = 0  # diagnostics: steps_run / batches_run is the mean batch size
        self.steps_run = 0

    @property
    def queued(self) -> int:
        """Steps waiting for a batch now (announced as load: server/node.py)."""
        return len(self._queue)

    async def run(self, model: SpanModel, hidden: torch.Tensor, cache: KVCache,
                  start_position: int, priority: float = 0.0) -> tuple[torch.Tensor, float]:
        """Run hidden [T, D] through `model` at start_position; returns (output [T, D], compute seconds).

        The seconds are this step's share of its batch's time, by positions: what the step cost
        the node (per-peer compute quotas charge it), not what its batch-mates cost."""
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(model, SequenceStep(hidden, cache, start_position), future, priority))
        self._last_step[cache] = time.monotonic()
        self._arrived.set()
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._queue:
            await self._wait_for_company()
            batch = self._take()
            if batch:
                await self._run_batch(batch)

    async def _wait_for_company(self) -> None:
        """Wait up to max_wait while sessions active here have no step queued yet."""
        deadline = time.monotonic() + self.max_wait
        while len(self._queue) < self.max_batch and self._expected() > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _expected(self) -> int:
        """Sessions that stepped within active_seconds and have no step queued now."""
        now = time.monotonic()
        queued = {id(item.step.cache) for item in self._queue}
        return sum(1 for cache, at in list(self._last_step.items())
                   if now - at < self.active_seconds and id(cache) not in queued)

    def _take(self) -> list[_Queued]:
        """The queued step of lowest priority (the oldest among equals), plus the queued steps of
        the same model that fit, in that order; the rest stay queued in arrival order."""
        live = [item for item in self._queue if not item.future.done()]  # done: its session gave up waiting
        chosen: set[int] = set()
        batch: list[_Queued] = []
        positions = 0
        for index in sorted(range(len(live)), key=lambda i: live[i].priority):  # stable: arrival order among equals
            item = live[index]
            n = item.step.hidden.shape[0]
            if not batch or (item.model is batch[0].model and len(batch) < self.max_batch
                             and positions + n <= self.max_batch_positions):
                batch.append(item)
                chosen.add(index)
                positions += n
        self._queue = deque(item for index, item in enumerate(live) if index not in chosen)
        return batch

    async def _run_batch(self, batch: list[_Queued]) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            outputs = await loop.run_in_executor(self.executor, batch[0].model.forward_many,
                                                 [item.step for item in batch])
        except Exception as error:
            if len(batch) == 1:
                _settle(batch[0], error=error)
                return
            # Isolate the culprit: one at a time, each step gets its own output or its own error.
            logger.warning("a batch of %d steps failed (%s); re-running them one at a time", len(batch), error)
            for item in batch:
                await self._run_batch([item])
            return
        seconds = time.perf_counter() - started
        self.batches_run += 1
        self.steps_run += len(batch)
        positions = sum(item.step.hidden.shape[0] for item in batch)
        for item, output in zip(batch, outputs):
            _settle(item, result=(output, seconds * item.step.hidden.shape[0] / positions))


def _settle(item: _Queued, result=None, error: BaseException | None = None) -> None:
    if item.future.done():
        return
    if error is not None:
        item.future.set_exception(error)
    else:
        item.future.set_result(result)
