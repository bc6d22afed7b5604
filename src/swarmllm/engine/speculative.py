"""Speculative decoding: draft k tokens cheaply, verify them in one pass of the full model.

A round feeds [last token, d1 .. dk] to the model in one step (one traversal of the swarm
instead of k + 1) and keeps the longest accepted prefix of the draft plus one token the
model picks itself, so every round yields between 1 and k + 1 tokens. Positions after the
accepted ones are rolled back by the next step, which starts right after them.

Promises:
- greedy output is token for token that of plain decoding: a verify step's rows are computed
  exactly as single-position steps (`EXACT_STEP_POSITIONS` in blocks.py), and the logits of
  row i are taken from that row alone (the LM head sees one row, as in plain decoding);
- sampling keeps the target distribution (standard speculative sampling): draft token x is
  accepted with probability min(1, p(x) / q(x)); after a rejection the token is drawn from
  norm(max(0, p - q)); a deterministic drafter has a one-hot q. p is the distribution
  `Sampler` draws from (temperature, top-k, top-p applied), and all randomness comes from the
  sampler's seeded generator, so a run is reproducible (but differs from a non-speculative
  run with the same seed);
- the number of drafted tokens adapts to the observed acceptance rate (`DraftLength`).

Drafters: `NgramDrafter` (prompt lookup: no model, good on text that repeats itself, such as
code) and `ModelDrafter` (a small model sharing the tokenizer; `early_exit_drafter` uses the
first blocks of the target model with its final norm and LM head). Pure compute, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Protocol, Sequence

import torch

from swarmllm.engine.blocks import EXACT_STEP_POSITIONS, SpanModel
from swarmllm.engine.head import ModelHead
from swarmllm.engine.sampling import Sampler, SamplingParams, greedy

MAX_DRAFT_TOKENS = EXACT_STEP_POSITIONS - 1  # a verify step carries the last token and the draft


@dataclass(frozen=True)
class Draft:
    tokens: list[int]
    probs: Optional[torch.Tensor] = None  # [len(tokens), V]: the distribution each token was drawn from;
    # None for a deterministic drafter (q is one-hot on the token)


class Drafter(Protocol):
    name: str

    def draft(self, context: Sequence[int], k: int) -> Draft:
        """Up to k tokens likely to follow `context` (prompt and tokens so far)."""
        ...


class NgramDrafter:
    """Prompt lookup: find the latest earlier occurrence of the context's last n tokens
    (n from max_ngram down to min_ngram) and propose the tokens that followed it.

    A single-token match (min_ngram 1) guesses badly: on the benchmark's prose prompts it
    drafted ~0.5 tokens per step of which 7 % were accepted; from 2 tokens up it rarely drafts
    on prose, and drafts better on code (benchmarks/speculative.py)."""

    name = "ngram"

    def __init__(self, max_ngram: int = 4, min_ngram: int = 2) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram} and {max_ngram}")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def draft(self, context: Sequence[int], k: int) -> Draft:
        if k <= 0:
            return Draft([])
        context = list(context)
        for n in range(min(self.max_ngram, len(context) - 1), self.min_ngram - 1, -1):
            tail = context[-n:]
            for i in range(len(context) - n - 1, -1, -1):  # latest first; the tail itself is excluded
                if context[i:i + n] == tail:
                    return Draft(context[i + n:i + n + k])
        return Draft([])


class ModelDrafter:
    """A small causal model with its own KV cache; drafts greedily, or by sampling from its own
    distribution (same temperature / top-k / top-p as the target) when the target samples.

    The cache is kept across rounds: each round feeds only the tokens it has not seen yet
    (after rolling back past the drafts the target rejected)."""

    def __init__(self, head: ModelHead, span: SpanModel, max_length: int, params: SamplingParams,
                 name: str = "model") -> None:
        if span.start != 0:
            raise ValueError(f"a draft model must start at block 0, got blocks [{span.start}, {span.end})")
        self.head, self.span, self.name = head, span, name
        self.cache = span.new_cache(max_length)
        self.cached: list[int] = []  # the tokens whose K/V the cache holds, in order
        seed = (params.seed if params.seed is not None else 0) + 0x5EED  # its own stream, not the target's
        self.sampler = Sampler(SamplingParams(params.temperature, params.top_k, params.top_p, seed))

    def draft(self, context: Sequence[int], k: int) -> Draft:
        if k <= 0:
            return Draft([])
        k = min(k, self.cache.max_length - len(context))
        if k <= 0:
            return Draft([])
        keep = 0
        while keep < min(len(self.cached), len(context) - 1) and self.cached[keep] == context[keep]:
            keep += 1
        self.cached = self.cached[:keep]
        feed = list(context[keep:])
        tokens: list[int] = []
        probs: list[torch.Tensor] = []
        for _ in range(k):
            hidden = self.span.forward(self.head.embed([feed]), self.cache, len(self.cached))
            self.cached += feed
            logits = self.head.logits(hidden[:, -1:])[0, -1]
            q = self.sampler.distribution(logits)
            token = greedy(logits) if q is None else self.sampler.sample_from(q)
            if q is not None:
                probs.append(q)
            tokens.append(token)
            feed = [token]
        return Draft(tokens, torch.stack(probs) if probs else None)


def early_exit_drafter(head: ModelHead, span: SpanModel, n_blocks: int, max_length: int,
                       params: SamplingParams) -> ModelDrafter:
    """Blocks [0, n_blocks) of `span` (which must start at block 0), then the final norm and LM head."""
    if not 1 <= n_blocks <= span.end:
        raise ValueError(f"an early-exit drafter needs 1..{span.end} blocks, got {n_blocks}")
    return ModelDrafter(head, span.view(0, n_blocks), max_length, params, name="early-exit")


def accept_draft(draft: Draft, target_logits: Callable[[int], torch.Tensor], sampler: Sampler,
                 context: Sequence[int] = ()) -> list[int]:
    """Verify a draft against the target: returns the accepted draft tokens plus one more
    (the correction after a rejection, or the bonus token after the last draft token).

    target_logits(i) gives the target's logits [V] after the context and draft[:i]; it is
    called only for the rows that are reached, one row at a time. `context`: the tokens before the
    draft, for the sampler's penalties (row i's context also holds draft[:i])."""
    out: list[int] = []
    for i, x in enumerate(draft.tokens):
        logits = target_logits(i)
        row_context = [*context, *draft.tokens[:i]]
        p = sampler.distribution(logits, row_context)
        if p is None:  # greedy: keep the draft token only where it is the target's argmax
            token = sampler.sample(logits, row_context)
            out.append(token)
            if token != x:
                return out
            continue
        q = None if draft.probs is None else draft.probs[i].float()
        px, qx = float(p[x]), (1.0 if q is None else float(q[x]))
        if qx > 0 and (px >= qx or sampler.uniform() < px / qx):
            out.append(x)
            continue
        if q is None:
            residual = p.clone()
            residual[x] = 0.0
        else:
            residual = (p - q).clamp(min=0.0)
        total = float(residual.sum())
        out.append(sampler.sample_from(residual / total if total > 0 else p))
        return out
    out.append(sampler.sample(target_logits(len(draft.tokens)), [*context, *draft.tokens]))
    return out


class DraftLength:
    """k for the next round, from a running estimate of the per-token acceptance rate a.

    The k-th draft token is used with probability a^k, so k grows while that exceeds
    `min_gain` (a verify step costs little more per extra position, but not nothing; over a
    WAN almost nothing, on a CPU-bound chain each position costs some compute)."""

    def __init__(self, initial: int = 4, max_k: int = 8, adaptive: bool = True, min_gain: float = 0.1,
                 decay: float = 0.8) -> None:
        if not 1 <= max_k <= MAX_DRAFT_TOKENS:
            raise ValueError(f"the draft length must be 1..{MAX_DRAFT_TOKENS}, got {max_k}")
        self.max_k, self.adaptive, self.min_gain, self.decay = max_k, adaptive, min_gain, decay
        self.k = min(initial, max_k) if adaptive else max_k
        self._accepted, self._rejected = 2.0, 1.0  # a mild prior: a = 2/3

    @property
    def acceptance(self) -> float:
        return self._accepted / (self._accepted + self._rejected)

    def update(self, drafted: int, accepted: int) -> None:
        if drafted == 0:
            return
        self._accepted = self.decay * self._accepted + accepted
        self._rejected = self.decay * self._rejected + (1 if accepted < drafted else 0)
        if self.adaptive:
            a = min(self.acceptance, 0.999)
            self.k = max(1, min(self.max_k, int(math.log(self.min_gain) / math.log(a)) - 1 if a > 0 else 1))


@dataclass
class SpeculationStats:
    rounds: int = 0          # verify steps that carried a draft
    drafted: int = 0         # draft tokens sent for verification
    accepted: int = 0        # draft tokens the target kept
    forward_steps: int = 0   # passes through the model (prefill and plain steps included)
    tokens: int = 0          # tokens produced
    draft_lengths: list[int] = field(default_factory=list)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def accepted_per_round(self) -> float:
        return self.accepted / self.rounds if self.rounds else 0.0

    @property
    def tokens_per_step(self) -> float:
        return self.tokens / self.forward_steps if self.forward_steps else 0.0

    def as_dict(self) -> dict:
        return {"rounds": self.rounds, "drafted": self.drafted, "accepted": self.accepted,
                "forward_steps": self.forward_steps, "tokens": self.tokens,
                "acceptance_rate": self.acceptance_rate, "accepted_per_round": self.accepted_per_round,
                "tokens_per_step": self.tokens_per_step,
                "mean_draft_length": sum(self.draft_lengths) / len(self.draft_lengths) if self.draft_lengths else 0.0}


@dataclass
class Speculation:
    """How one generation speculates: the drafter, the draft length policy, and its statistics."""

    drafter: Drafter
    length: DraftLength = field(default_factory=DraftLength)
    stats: SpeculationStats = field(default_factory=SpeculationStats)

    def tokens(self, head: ModelHead, forward_fn, prompt_ids: Sequence[int], sampler: Sampler, limit: int,
               max_new_tokens: int) -> Iterator[int]:
        """Yield sampled tokens; the caller stops consuming when generation ends.

        Invariant: `position` (positions the model has cached and kept) == prompt + tokens - 1."""
        context = list(prompt_ids)
        hidden = forward_fn(head.embed([context]), 0)
        self.stats.forward_steps += 1
        position = len(context)
        token = sampler.sample(head.logits(hidden[:, -1:])[0, -1], context)
        while True:
            context.append(token)
            self.stats.tokens += 1
            yield token
            produced = len(context) - len(prompt_ids)
            k = min(self.length.k, limit - position - 1, max_new_tokens - produced - 1)
            draft = self.drafter.draft(context, k) if k > 0 else Draft([])
            if len(draft.tokens) > max(k, 0):
                draft = Draft(draft.tokens[:k], None if draft.probs is None else draft.probs[:k])
            hidden = forward_fn(head.embed([[token] + draft.tokens]), position)  # rolls back rejected drafts
            self.stats.forward_steps += 1
            new = accept_draft(draft, lambda i: head.logits(hidden[:, i:i + 1])[0, 0], sampler, context)
            if draft.tokens:
                self.stats.rounds += 1
                self.stats.drafted += len(draft.tokens)
                self.stats.accepted += len(new) - 1
                self.stats.draft_lengths.append(len(draft.tokens))
                self.length.update(len(draft.tokens), len(new) - 1)
            position += len(new)
            for token in new[:-1]:
                context.append(token)
                self.stats.tokens += 1
                yield token
            token = new[-1]
