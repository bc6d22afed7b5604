"""The generation loop shared by local inference and the swarm client.

`iter_generate(head, tokenizer, forward_fn, prompt_ids, params)` yields one `GenerationStep`
per sampled token; `generate(...)` drains it into a `GenerationResult` with timings.
`forward_fn(hidden[1, T, D], start_position) -> hidden[1, T, D]` runs ALL blocks and keeps its
own KV state: locally a SpanModel + KVCache, in the swarm a chain of remote spans. The prompt
is prefilled in one call, then one token per call. A `Decoder` replaces that plain loop: with a
`Speculation` (speculative.py) each call verifies drafted tokens too and may start before the
previous call's end (a rollback), which forward_fn must allow; ring decoding (client/ring.py)
has the swarm sample and only reports the tokens.

Taking back: a decoder that finds tokens it yielded wrong (the swarm's verification caught a
liar late, client/verified_decoding.py) yields `Retract(keep)`, then the right tokens; the next
GenerationStep says how many tokens and characters of what was yielded are withdrawn
(`retracted_tokens`, `retracted_chars`: drop them, then append `text_delta`).

Stopping: an EOS id (finish "stop", the EOS id is the last of `token_ids` but adds no text), a
stop string (finish "stop"; the text is cut before it, text after it is never emitted), or
`max_new_tokens` / the context limit (finish "length"). Text deltas are emitted only once they
cannot be the start of a stop string and do not end in a partial UTF-8 character.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol, Sequence

import torch

from swarmllm.engine.head import ModelHead
from swarmllm.engine.sampling import Sampler, SamplingParams

ForwardFn = Callable[[torch.Tensor, int], torch.Tensor]

# Prompts longer than this many positions are prefilled in chunks of it (pipelined through a
# swarm's chain). Part of the computation's definition: the local reference chunks the same way.
PREFILL_CHUNK = 256


def chunked_forward(forward: ForwardFn, size: int | None = PREFILL_CHUNK) -> ForwardFn:
    """forward_fn(hidden, start) running steps longer than `size` as consecutive chunks."""
    def run(hidden: torch.Tensor, start_position: int) -> torch.Tensor:
        if not size or hidden.shape[1] <= size:
            return forward(hidden, start_position)
        return torch.cat([forward(hidden[:, o:o + size], start_position + o) for o in range(0, hidden.shape[1], size)],
                         dim=1)
    return run


class Decoder(Protocol):
    """A source of sampled tokens that replaces the plain one-token-per-call loop."""

    def tokens(self, head: ModelHead, forward_fn: ForwardFn, prompt_ids: Sequence[int], sampler: Sampler,
               limit: int, max_new_tokens: int) -> Iterator[int]: ...


class TextCodec(Protocol):
    eos_token_ids: tuple[int, ...]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...


@dataclass(frozen=True)
class GenerationStep:
    token_id: int
    text_delta: str  # new text that became final with this token ("" when held back)
    finish_reason: str | None = None  # set on the last step: "stop" or "length"
    retracted_tokens: int = 0  # tokens yielded before that were wrong: drop them before this one
    retracted_chars: int = 0   # characters of text yielded before that were wrong: drop them before text_delta
    logprob: float | None = None  # with `logprobs`: the token's log-probability under the model (before sampling's
    top_logprobs: tuple[tuple[int, float], ...] = ()  # changes), and the most likely (token id, log-probability)s


@dataclass(frozen=True)
class Retract:
    """From a decoder: of the tokens yielded so far only the first `keep` stand; new ones follow."""

    keep: int


@dataclass(frozen=True)
class GenerationTimings:
    ttft_s: float  # prompt submitted -> first token sampled (prefill + head)
    total_s: float
    decode_tokens_per_s: float  # tokens after the first / time after the first token


@dataclass(frozen=True)
class GenerationResult:
    text: str
    token_ids: list[int]  # sampled ids, EOS included when generation stopped on it
    finish_reason: str
    prompt_tokens: int
    timings: GenerationTimings = field(compare=False)


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


def iter_generate(
    head: ModelHead,
    tokenizer: TextCodec,
    forward_fn: ForwardFn,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    max_length: int | None = None,
    decoder: Decoder | None = None,
    logprobs: int | None = None,
) -> Iterator[GenerationStep]:
    """Yield one GenerationStep per sampled token; the last one carries finish_reason.

    With a `decoder`, tokens come from it, e.g. a `Speculation`'s draft-and-verify rounds
    (several per forward_fn call; its `stats` say how many were drafted and accepted).
    With `logprobs` (0 to 20), each step carries its token's log-probability and that many of the most likely
    tokens'; only decoders that sample each token here just before yielding it can say them (plain decoding
    and its verified variant, not a ring or speculation: the caller chooses)."""
    if not prompt_ids:
        raise ValueError("The prompt is empty; give at least one token.")
    limit = max_length or head.config.context_length
    if len(prompt_ids) >= limit:
        raise ValueError(f"The prompt has {len(prompt_ids)} tokens; this model accepts at most {limit - 1}.")
    sampler = Sampler(params, logprobs=logprobs)
    if decoder is None:
        tokens = _plain_tokens(head, forward_fn, prompt_ids, sampler)
    else:
        tokens = decoder.tokens(head, forward_fn, prompt_ids, sampler, limit, params.max_new_tokens)
    try:
        steps = _steps(tokens, tokenizer, prompt_ids, params, limit)
        if logprobs is None:
            yield from steps
        else:
            for step in steps:
                chosen, top = sampler.last_logprobs
                yield dataclasses.replace(step, logprob=chosen, top_logprobs=top)
    finally:
        close = getattr(tokens, "close", None)
        if close is not None:
            close()  # a decoder holding remote state (a ring) hears that generation ended


def _steps(tokens: Iterator[int], tokenizer: TextCodec, prompt_ids: Sequence[int], params: SamplingParams,
           limit: int) -> Iterator[GenerationStep]:
    eos = set(tokenizer.eos_token_ids)
    generated: list[int] = []
    emitted = 0  # characters of decoded text already yielded
    emitted_text = ""
    retracted_tokens = retracted_chars = 0  # to announce on the next step
    for token in tokens:
        if isinstance(token, Retract):
            retracted_tokens += len(generated) - token.keep
            generated = generated[:token.keep]
            kept = _common_prefix(emitted_text, tokenizer.decode(generated))
            retracted_chars += emitted - kept
            emitted, emitted_text = kept, emitted_text[:kept]
            continue
        generated.append(token)
        position = len(prompt_ids) + len(generated) - 1  # positions fed to the model before this token
        retract = {"retracted_tokens": retracted_tokens, "retracted_chars": retracted_chars}
        retracted_tokens = retracted_chars = 0
        if token in eos:
            yield GenerationStep(token, _final_delta(tokenizer, generated[:-1], emitted, params.stop), "stop", **retract)
            return
        text = tokenizer.decode(generated)
        cut = min((i for i in (text.find(s) for s in params.stop) if i >= 0), default=-1)
        if cut >= 0:
            yield GenerationStep(token, text[emitted:cut], "stop", **retract)
            return
        if len(generated) >= params.max_new_tokens or position >= limit:
            yield GenerationStep(token, text[emitted:], "length", **retract)
            return
        safe = len(text) - _held_back(text, params.stop)
        if text.endswith("\ufffd"):  # partial multi-byte character: wait for the next token
            safe = min(safe, len(text) - 1)
        delta = text[emitted:safe] if safe > emitted else ""
        emitted = max(emitted, safe)
        emitted_text = text[:emitted]
        yield GenerationStep(token, delta, **retract)


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _plain_tokens(head: ModelHead, forward_fn: ForwardFn, prompt_ids: Sequence[int], sampler: Sampler) -> Iterator[int]:
    """Prefill, then one position per forward_fn call."""
    position, tokens_in, context = 0, list(prompt_ids), list(prompt_ids)
    while True:
        hidden = forward_fn(head.embed([tokens_in]), position)
        position += len(tokens_in)
        token = sampler.sample(head.logits(hidden[:, -1:])[0, -1], context)
        context.append(token)
        yield token
        tokens_in = [token]


def _final_delta(tokenizer: TextCodec, ids: list[int], emitted: int, stops: tuple[str, ...]) -> str:
    text = tokenizer.decode(ids)
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[emitted:cut]


def generate(
    head: ModelHead,
    tokenizer: TextCodec,
    forward_fn: ForwardFn,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    max_length: int | None = None,
    decoder: Decoder | None = None,
) -> GenerationResult:
    """Run iter_generate to the end and collect text, ids, finish reason and timings."""
    started = time.perf_counter()
    first_at = started
    pieces: list[str] = []
    ids: list[int] = []
    finish = "length"
    for step in iter_generate(head, tokenizer, forward_fn, prompt_ids, params, max_length, decoder):
        if not ids:
            first_at = time.perf_counter()
        ids.append(step.token_id)
        pieces.append(step.text_delta)
        if step.finish_reason:
            finish = step.finish_reason
    ended = time.perf_counter()
    decode_s = ended - first_at
    timings = GenerationTimings(
        ttft_s=first_at - started,
        total_s=ended - started,
        decode_tokens_per_s=(len(ids) - 1) / decode_s if len(ids) > 1 and decode_s > 0 else 0.0,
    )
    return GenerationResult("".join(pieces), ids, finish, len(prompt_ids), timings)
