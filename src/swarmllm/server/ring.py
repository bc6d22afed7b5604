"""Ring decoding, the server's side: the end of the chain samples, the start embeds.

A step carrying a `RingSpec` starts a ring. The server whose span ends the chain keeps a
`RingState` for the session: after each ring step it samples the next token from its own
output (the session's sampling parameters; the RNG is counter-based, so `draws` is its whole
state), reports it to the client (`TokenResult`) and sends it to the first server
(`RingToken`), which embeds it and runs it as the next step. The ring ends at an EOS token, at
`max_tokens`, on a `RingStop`, or when the client sends a step of its own.

Sampling here gives the same tokens as the client would: same logits (the hidden states the
client would have received, before any wire rounding), same sampler, same draw counter.
No networking here: handlers.py moves the messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from swarmllm.engine.head import ModelHead
from swarmllm.engine.sampling import SAMPLING_OPTIONS, Sampler, SamplingParams
from swarmllm.protocol import RingSpec


@dataclass
class RingState:
    spec: RingSpec
    base_step_id: int       # the step that started the ring; token k comes from step base + k
    sampler: Sampler
    produced: int = 0       # tokens sampled so far
    stopped: bool = False   # RingStop received
    history: list[int] = field(default_factory=list)  # the context tokens the penalties look at (v9)

    @classmethod
    def start(cls, spec: RingSpec, step_id: int) -> "RingState":
        s = spec.sampling
        params = SamplingParams(**{name: getattr(s, name) for name in SAMPLING_OPTIONS}, seed=s.seed)
        return cls(spec, step_id, Sampler(params, draws=s.draws), history=list(s.history))

    def covers(self, step_id: int) -> bool:
        """Whether `step_id` is one of this ring's steps."""
        return self.base_step_id <= step_id < self.base_step_id + self.spec.max_tokens

    def next_token(self, head: ModelHead, last_hidden: torch.Tensor, next_position: int,
                   max_length: int) -> tuple[int, bool]:
        """(token sampled from the output at the step's last position, whether the ring ends with it).

        next_position: where the token goes; the ring also ends when the session has no room for it."""
        token = self.sampler.sample(head.logits(last_hidden.reshape(1, 1, -1))[0, -1], self.history)
        if self.sampler.params.penalized:
            self.history.append(token)
            keep = self.sampler.params.penalty_last_n
            if keep > 0 and len(self.history) > 2 * keep:  # trimmed now and then, not on every token
                del self.history[:-keep]
        self.produced += 1
        finished = (token in self.spec.eos_token_ids or self.produced >= self.spec.max_tokens
                    or next_position >= max_length)
        return token, finished
