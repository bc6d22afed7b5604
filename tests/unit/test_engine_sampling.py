"""Sampler determinism and the generation loop's stop logic, on scripted fake models."""

from __future__ import annotations

import pytest
import torch

from swarmllm.engine.generation import generate, iter_generate
from swarmllm.engine.sampling import Sampler, SamplingParams
from swarmllm.models.config import ModelConfig

VOCAB = "abcdefghijklmnopqrstuvwxyz .!"
EOS = len(VOCAB)


class FakeTokenizer:
    eos_token_ids = (EOS,)

    def decode(self, ids, skip_special_tokens=True):
        return "".join(VOCAB[i] for i in ids if i != EOS)


class ScriptedHead:
    """embed() passes the token id through; logits() make the scripted next token the argmax."""

    def __init__(self, script: list[int]) -> None:
        self.script, self.calls = script, 0
        self.config = ModelConfig(family="llama", n_blocks=1, hidden_size=1, intermediate_size=1, n_heads=1,
                                  n_kv_heads=1, head_dim=1, vocab_size=EOS + 1, rms_norm_eps=1e-6,
                                  rope_theta=1e4, context_length=64)

    def embed(self, ids):
        return torch.tensor(ids, dtype=torch.float32).unsqueeze(-1)

    def logits(self, hidden):
        logits = torch.zeros(1, 1, EOS + 1)
        logits[0, 0, self.script[min(self.calls, len(self.script) - 1)]] = 10.0
        self.calls += 1
        return logits


def identity_forward(hidden, start):
    return hidden


def ids_of(text: str) -> list[int]:
    return [VOCAB.index(c) for c in text]


def run(script: list[int], **params):
    return generate(ScriptedHead(script), FakeTokenizer(), identity_forward, [0, 1], SamplingParams(**params))


def test_sampler_is_deterministic_with_seed():
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    params = SamplingParams(temperature=0.9, top_k=50, top_p=0.9, seed=1234)
    first = [Sampler(params).sample(logits) for _ in range(3)]
    a, b = Sampler(params), Sampler(params)
    assert [a.sample(logits) for _ in range(20)] == [b.sample(logits) for _ in range(20)]
    assert len(set(first)) == 1
    other = Sampler(SamplingParams(temperature=0.9, top_k=50, top_p=0.9, seed=99))
    assert [other.sample(logits) for _ in range(20)] != [Sampler(params).sample(logits) for _ in range(1)] * 20


def test_sampler_greedy_top_k_top_p():
    logits = torch.tensor([0.0, 5.0, 4.9, -1.0])
    assert Sampler(SamplingParams()).sample(logits) == 1
    top1 = Sampler(SamplingParams(temperature=1.0, top_k=1, seed=0))
    assert {top1.sample(logits) for _ in range(20)} == {1}
    nucleus = Sampler(SamplingParams(temperature=1.0, top_p=0.5, seed=0))
    assert {nucleus.sample(logits) for _ in range(20)} == {1}
    both = Sampler(SamplingParams(temperature=1.0, top_k=2, seed=0))
    assert {both.sample(logits) for _ in range(100)} == {1, 2}


def test_invalid_params_are_clear():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="tuple"):
        SamplingParams(stop="x")


def test_stops_on_eos():
    result = run(ids_of("hi!") + [EOS], max_new_tokens=10)
    assert (result.text, result.finish_reason) == ("hi!", "stop")
    assert result.token_ids[-1] == EOS and result.prompt_tokens == 2


def test_stops_on_max_new_tokens():
    result = run(ids_of("abcdefgh"), max_new_tokens=5)
    assert (result.text, result.finish_reason, len(result.token_ids)) == ("abcde", "length", 5)


def test_stop_string_is_trimmed_and_never_streamed():
    steps = list(iter_generate(ScriptedHead(ids_of("say end. more")), FakeTokenizer(), identity_forward, [0],
                               SamplingParams(max_new_tokens=20, stop=("end.",))))
    assert "".join(s.text_delta for s in steps) == "say "
    assert steps[-1].finish_reason == "stop" and all(s.finish_reason is None for s in steps[:-1])
    # a partial match that turns out not to be a stop string is released later
    result = run(ids_of("an enx") + [EOS], max_new_tokens=20, stop=("end",))
    assert result.text == "an enx"


def test_context_limit_ends_with_length():
    head = ScriptedHead(ids_of("aaaaaaaaaa"))
    result = generate(head, FakeTokenizer(), identity_forward, [0, 1], SamplingParams(max_new_tokens=50), max_length=6)
    assert result.finish_reason == "length" and len(result.token_ids) == 5


def test_tiny_top_p_keeps_the_most_likely_token():
    # Found by fuzzing the gateway: top_p=5e-324 dropped every token and sampling crashed.
    import torch

    from swarmllm.engine.sampling import Sampler, SamplingParams

    logits = torch.randn(4096, generator=torch.Generator().manual_seed(0))
    sampler = Sampler(SamplingParams(temperature=1.0, top_p=5e-324, seed=3))
    assert sampler.sample(logits) == int(torch.argmax(logits))
