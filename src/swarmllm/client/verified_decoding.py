"""Plain decoding that survives a late conviction: regenerate from the last verified position.

The engine's `Decoder` for sessions under `--verify sample|strict` (verification.py). It is the
plain loop (prefill, then one position per forward call, sampled here) plus one thing: when a
forward call raises `Rewind(p)`, the session has been cut back to positions [0, p), all
verified, on honest servers. Tokens sampled from outputs at positions >= p were sampled from
wrong numbers: the decoder yields `Retract(keep)` (engine/generation.py) for the tokens that
stand, restores the sampler's RNG to its state after them (the draw counter), and goes on from
position p with the inputs it already had there. The regenerated tokens are what an honest
chain gives: greedy text equals the single-process reference.

Under `sample` most steps are handed on before they are checked, so before yielding a token that
ends the generation (an EOS id, the token budget, the context limit, a stop string in the text)
the decoder has every server checked up to the end (`verify_all`): a finished generation is
verified to its last position, and a liar caught then rewinds it like any other.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

from swarmllm.client.verification import Rewind
from swarmllm.engine.generation import ForwardFn, Retract
from swarmllm.engine.head import ModelHead
from swarmllm.engine.sampling import Sampler

MAX_REWINDS = 16  # more than this in one generation: give up (each one banned a liar)


class RewindingDecoder:
    """The engine's Decoder for verified plain decoding (module docstring)."""

    def __init__(self, verify_all: Callable[[], None] = lambda: None, tokenizer=None) -> None:
        self.verify_all, self.tokenizer = verify_all, tokenizer
        self.rewinds = 0

    def tokens(self, head: ModelHead, forward_fn: ForwardFn, prompt_ids: Sequence[int], sampler: Sampler, limit: int,
               max_new_tokens: int) -> Iterator[object]:
        sequence = list(prompt_ids)   # prompt, then every token yielded and standing
        draws_before: list[int] = []  # the sampler's draw counter before each generated token
        position = 0                  # positions the session holds
        while True:
            draws = sampler.draws
            try:
                hidden = forward_fn(head.embed([sequence[position:]]), position)
                token = sampler.sample(head.logits(hidden[:, -1:])[0, -1], sequence)
                if self._ends(token, sequence, len(prompt_ids), limit, max_new_tokens, sampler.params.stop):
                    self.verify_all()
            except Rewind as rewind:
                self.rewinds += 1
                if self.rewinds > MAX_REWINDS:
                    raise
                sampler.draws = draws
                position = rewind.position
                # token k is sampled from the output at position len(prompt) - 1 + k: those from `position` on go
                keep = max(0, min(len(draws_before), position - len(prompt_ids) + 1))
                if keep < len(draws_before):
                    sampler.draws = draws_before[keep]
                    del draws_before[keep:], sequence[len(prompt_ids) + keep:]
                    yield Retract(keep)
                continue
            position = len(sequence)
            draws_before.append(draws)
            sequence.append(token)
            yield token

    def _ends(self, token: int, sequence: list[int], n_prompt: int, limit: int, max_new_tokens: int,
              stops: Sequence[str]) -> bool:
        """Whether `token` would end the generation (engine/generation.py's rules)."""
        generated = len(sequence) - n_prompt + 1
        if generated >= max_new_tokens or len(sequence) >= limit:
            return True
        if self.tokenizer is None:
            return True  # cannot tell: check every token
        if token in self.tokenizer.eos_token_ids:
            return True
        return bool(stops) and any(stop in self.tokenizer.decode(sequence[n_prompt:] + [token]) for stop in stops)
