"""Generations for the gateway: request -> `Generation` through the swarm -> streamed deltas.

Uses the client's generation API only (client/generation.py). Each request opens its own
session (its own KV cache on every server of its chain) before any byte is sent to the HTTP
client, so a missing block or a full swarm is a clean HTTP error, not a broken stream. The
token loop runs on a worker thread (sampling and the LM head are CPU work); deltas cross to
the event loop through a queue. A disconnected HTTP client sets `cancel`: the loop stops at
the next token and the session is closed on every server. With `ring` (the default), chains
whose ends offer it decode in a ring (the last server samples and feeds the first; same
tokens, fewer trips over the gateway's own link). Only catalog models are loaded (their
heads and tokenizers); the app decides which of them the swarm serves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Mapping, Optional

from swarmllm.client.generation import (
    ClientModel, Generation, GenerationOptions, GenerationResult, Generator, PromptTooLongError, SamplingParams,
    UnknownModelError, list_catalog, sampling_options,
)
from swarmllm.client.lite import LiteError
from swarmllm.client.swarm_client import SwarmClient


OPENAI_TEMPERATURE = 1.0  # what a request that sets no temperature gets for a model with no recommendation


@dataclass
class PreparedGeneration:
    """A validated request: its model, prompt ids and options; `result` once it has run."""

    model_id: str
    generator: Generator
    prompt_ids: list[int]
    options: GenerationOptions
    generation: Optional[Generation] = None
    result: Optional[GenerationResult] = None
    streamed: bool = False  # its stream started: the stream closes its session
    logprobs: list = field(default_factory=list)  # with options.logprobs: a TokenLogprob per token of the result

    def variant(self, index: int) -> "PreparedGeneration":
        """Choice `index` of an n > 1 request: the same prompt, the next seed."""
        sampling = dataclasses.replace(self.options.sampling, seed=(self.options.sampling.seed + index) % 2**63)
        return PreparedGeneration(self.model_id, self.generator, self.prompt_ids,
                                  dataclasses.replace(self.options, sampling=sampling))

    @property
    def budget_tokens(self) -> int:
        """What it may cost: prompt plus the most tokens it may generate (for the rate limiter)."""
        return len(self.prompt_ids) + self.options.sampling.max_new_tokens


@dataclass
class Delta:
    text: str
    finish_reason: Optional[str] = None
    retracted_chars: int = 0  # characters of text sent before that were wrong (verification caught a liar late)
    logprob: Optional["TokenLogprob"] = None  # with logprobs: this token's


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability and its most likely alternatives, as text (the API's shapes)."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...]


def token_logprob(tokenizer, step) -> TokenLogprob:
    text = lambda i: tokenizer.decode([i], skip_special_tokens=False)  # noqa: E731
    return TokenLogprob(text(step.token_id), step.logprob, tuple((text(i), lp) for i, lp in step.top_logprobs))


class GenerationService:
    def __init__(self, client: SwarmClient, max_prompt_tokens: int, max_new_tokens: int, ring: bool = True,
                 max_active: int = 8, verify: str = "sample", radius: str = "public", lite: bool = False):
        self.client, self.ring, self.verify, self.radius = client, ring, verify, radius
        self.lite = lite  # no weights here: tokenizers from the servers' headers, ring decoding (client/lite.py)
        self.max_prompt_tokens, self.max_new_tokens = max_prompt_tokens, max_new_tokens
        self._generators: dict[str, Generator] = {}
        self._lock = threading.Lock()
        self.tokens_generated = 0  # since start; the dashboard derives tokens/s from it
        # Token loops get their own threads, one per admitted generation, so that long generations
        # never hold up tokenizing and session opening, which run on asyncio's default pool.
        self.workers = ThreadPoolExecutor(max_workers=max_active, thread_name_prefix="swarmllm-generation")
        self.cancelled = 0  # generations stopped early because their HTTP client went away
        self._running: dict[int, tuple[PreparedGeneration, float]] = {}  # opened, not closed: id -> (job, since)
        self._running_lock = threading.Lock()  # not _lock: that one is held while a model loads

    def active_chains(self) -> list[dict]:
        """The chains of the generations in progress now (the dashboard's "chains in use"), oldest first."""
        with self._running_lock:
            running = sorted(self._running.values(), key=lambda item: item[1])
        chains = []
        for job, since in running:
            generation = job.generation
            if generation is None:
                continue
            try:
                route = [{"peer_id": h.peer_id, "start": h.start, "end": h.end} for h in generation.route]
            except RuntimeError:  # the chain changed while it was read (a failover): next refresh
                continue
            chains.append({"model_id": job.model_id, "route": route, "since": since,
                           "tokens": len(generation.token_ids), "decoding": generation.decoding})
        return chains

    def _finished(self, job: PreparedGeneration) -> None:
        with self._running_lock:
            self._running.pop(id(job), None)

    def generator(self, model_id: str) -> Generator:
        """The model's generator, its head and tokenizer loaded once (UnknownModelError for names we cannot load).

        Only catalog names are loaded: a user-supplied string is never taken for a path."""
        if model_id not in list_catalog():
            raise UnknownModelError(f"{model_id!r} is not a catalog model")
        with self._lock:
            if model_id not in self._generators:
                if self.lite:
                    try:
                        self._generators[model_id] = Generator.lite(model_id, self.client)
                    except LiteError as e:
                        raise UnknownModelError(str(e)) from None
                else:
                    self._generators[model_id] = Generator.swarm(ClientModel.load(model_id), self.client)
            return self._generators[model_id]

    def prepare(self, model_id: str, messages: Optional[list[dict]], prompt: Optional[str], *, max_tokens: Optional[int],
                sampling: Mapping[str, Any], seed: Optional[int], stop: list[str],
                verify: Optional[str] = None, radius: Optional[str] = None,
                privacy: Optional[str] = None, max_price: Optional[float] = None,
                logprobs: Optional[int] = None) -> PreparedGeneration:
        """sampling: the request's sampling options (None = unset: the model's recommended value, else OpenAI's
        default, temperature 1)."""
        generator = self.generator(model_id)
        model = generator.model
        prompt_ids = model.chat_ids(messages) if messages is not None else model.tokenizer.encode(prompt or "")
        if not prompt_ids:
            raise PromptTooLongError("the prompt is empty; send at least one token")
        if len(prompt_ids) > self.max_prompt_tokens:
            raise PromptTooLongError(f"the prompt is {len(prompt_ids)} tokens; this gateway accepts at most "
                                     f"{self.max_prompt_tokens}")
        if max_tokens is not None and max_tokens > self.max_new_tokens:
            raise PromptTooLongError(f"max_tokens is {max_tokens}; this gateway allows at most {self.max_new_tokens}")
        chosen = {"temperature": OPENAI_TEMPERATURE, **sampling_options(sampling, model_id)}
        params = SamplingParams(**chosen, max_new_tokens=max_tokens or self.max_new_tokens,
                                stop=tuple(stop), seed=seed if seed is not None else random.getrandbits(31))
        if logprobs is not None and self.lite:
            raise ValueError("this gateway is a lite client (no LM head): it cannot give log-probabilities")
        options = GenerationOptions(sampling=params, ring=None if self.ring and logprobs is None else False,
                                    verify=verify or self.verify, radius=radius or self.radius, privacy=privacy,
                                    max_price=max_price, logprobs=logprobs)
        model.session_length(len(prompt_ids), params.max_new_tokens)  # PromptTooLongError before any session
        return PreparedGeneration(model_id, generator, prompt_ids, options)

    def open(self, job: PreparedGeneration) -> Generation:
        """Open the session on every server of a chain (blocking; raises SwarmError when it cannot)."""
        job.generation = job.generator.start(job.prompt_ids, job.options)
        with self._running_lock:
            self._running[id(job)] = (job, time.time())
        return job.generation

    def abandon(self, job: PreparedGeneration) -> None:
        """Close the session of a job whose stream never started (its client left first), off the event loop."""
        if job.generation is not None and not job.streamed:
            job.streamed = True
            self._finished(job)
            threading.Thread(target=job.generation.close, name="close-abandoned", daemon=True).start()

    async def stream(self, job: PreparedGeneration, cancel: threading.Event) -> AsyncIterator[Delta]:
        """Yield text deltas of an opened job; sets `job.result` at the end. Closes the session."""
        job.streamed = True
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        generation = job.generation

        def work() -> None:
            try:
                tokenizer = job.generator.model.tokenizer
                for event in generation:
                    self.tokens_generated += 1
                    logprob = None
                    if job.options.logprobs is not None:
                        if event.retracted_tokens:
                            del job.logprobs[len(job.logprobs) - event.retracted_tokens:]
                        logprob = token_logprob(tokenizer, event)
                        job.logprobs.append(logprob)
                    loop.call_soon_threadsafe(queue.put_nowait, Delta(event.text_delta, event.finish_reason,
                                                                      event.retracted_chars, logprob))
                    if cancel.is_set():
                        self.cancelled += 1
                        break
                job.result = generation.result()
                loop.call_soon_threadsafe(queue.put_nowait, None)
            except BaseException as e:  # delivered to the request handler, never lost in a thread
                loop.call_soon_threadsafe(queue.put_nowait, e)
            finally:
                self._finished(job)
                generation.close()

        worker = loop.run_in_executor(self.workers, work)
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancel.set()
            await asyncio.shield(worker)
