"""Generations for the gateway: prompt -> session through the swarm -> streamed deltas.

Uses the client package only. Each request opens its own session (its own KV cache on
every server of its chain) before any byte is sent to the HTTP client, so a missing block
or a full swarm is a clean HTTP error, not a broken stream. The token loop runs on a worker
thread (sampling and the LM head are CPU work); deltas cross to the event loop through a
queue. A disconnected HTTP client sets `cancel`, the loop stops at the next token and the
session is closed on every server. With `ring` (the default), chains whose ends offer it
decode in a ring (the last server samples and feeds the first; same tokens, fewer trips over
the gateway's own link).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Optional

from swarmllm.client.generation import ClientModel, PromptTooLongError
from swarmllm.client.ring import RingDecoder, ring_supported
from swarmllm.client.swarm_client import RemoteSession, SwarmClient
from swarmllm.engine.generation import iter_generate
from swarmllm.engine.sampling import SamplingParams
from swarmllm.models.catalog import resolve_model


@dataclass
class PreparedGeneration:
    model_id: str
    model: ClientModel
    prompt_ids: list[int]
    params: SamplingParams
    length: int


@dataclass
class Delta:
    text: str
    finish_reason: Optional[str] = None


@dataclass
class GenerationSummary:
    route: list[dict]
    completion_tokens: int = 0
    prompt_tokens: int = 0
    finish_reason: str = "length"
    time_to_first_token: float = 0.0
    tokens_per_second: float = 0.0
    text: str = ""
    ring: bool = False  # decoded in a ring (the last server sampled)
    started: float = field(default_factory=time.perf_counter)


class GenerationService:
    def __init__(self, client: SwarmClient, max_prompt_tokens: int, max_new_tokens: int, ring: bool = True):
        self.client, self.ring = client, ring
        self.max_prompt_tokens, self.max_new_tokens = max_prompt_tokens, max_new_tokens
        self._models: dict[str, ClientModel] = {}
        self._lock = threading.Lock()
        self.tokens_generated = 0  # since start; the dashboard derives tokens/s from it

    def model(self, model_id: str) -> ClientModel:
        with self._lock:
            if model_id not in self._models:
                resolve_model(model_id)  # UnknownModelError (a ValueError) for names we cannot load
                self._models[model_id] = ClientModel.load(model_id)
            return self._models[model_id]

    def prepare(self, model_id: str, messages: Optional[list[dict]], prompt: Optional[str], *, max_tokens: Optional[int],
                temperature: float, top_p: float, seed: Optional[int], stop: list[str]) -> PreparedGeneration:
        model = self.model(model_id)
        if messages is not None:
            text = model.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        else:
            text = prompt or ""
        prompt_ids = model.tokenizer.encode(text)
        if not prompt_ids:
            raise PromptTooLongError("the prompt is empty; send at least one token")
        if len(prompt_ids) > self.max_prompt_tokens:
            raise PromptTooLongError(f"the prompt is {len(prompt_ids)} tokens; this gateway accepts at most "
                                     f"{self.max_prompt_tokens}")
        new_tokens = min(max_tokens or self.max_new_tokens, self.max_new_tokens)
        if max_tokens is not None and max_tokens > self.max_new_tokens:
            raise PromptTooLongError(f"max_tokens is {max_tokens}; this gateway allows at most {self.max_new_tokens}")
        params = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=new_tokens, stop=tuple(stop),
                                seed=seed if seed is not None else random.getrandbits(31))
        length = model.session_length(len(prompt_ids), params, None)
        return PreparedGeneration(model_id, model, prompt_ids, params, length)

    def open_session(self, job: PreparedGeneration) -> RemoteSession:
        return self.client.open_session(job.model.source.model_id, job.model.config.n_blocks, job.length)

    async def stream(self, job: PreparedGeneration, session: RemoteSession, cancel: threading.Event,
                     summary: GenerationSummary) -> AsyncIterator[Delta]:
        """Yield text deltas; fills `summary` as it goes. Closes the session at the end."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        summary.route = [{"peer_id": link.peer_id, "start": link.start, "end": link.end} for link in session.chain]
        summary.prompt_tokens = len(job.prompt_ids)

        decoder = None
        if self.ring and ring_supported(session.session):
            decoder = RingDecoder(self.client.loop.run, session.session, job.model.tokenizer.eos_token_ids)
            summary.ring = True

        def work() -> None:
            first_at = None
            try:
                for event in iter_generate(job.model.head, job.model.tokenizer, session.forward, job.prompt_ids,
                                           job.params, job.length, decoder):
                    if first_at is None:
                        first_at = time.perf_counter()
                        summary.time_to_first_token = first_at - summary.started
                    summary.completion_tokens += 1
                    self.tokens_generated += 1
                    if event.finish_reason:
                        summary.finish_reason = event.finish_reason
                    loop.call_soon_threadsafe(queue.put_nowait, Delta(event.text_delta, event.finish_reason))
                    if cancel.is_set():
                        summary.finish_reason = "stop"
                        break
                if first_at is not None and summary.completion_tokens > 1:
                    summary.tokens_per_second = (summary.completion_tokens - 1) / (time.perf_counter() - first_at)
                loop.call_soon_threadsafe(queue.put_nowait, None)
            except BaseException as e:  # delivered to the request handler, never lost in a thread
                loop.call_soon_threadsafe(queue.put_nowait, e)
            finally:
                try:
                    session.close()
                except Exception:
                    pass

        worker = loop.run_in_executor(None, work)
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                summary.text += item.text
                yield item
        finally:
            cancel.set()
            await asyncio.shield(worker)
