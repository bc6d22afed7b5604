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


# --- penalties and min-p (llama.cpp's / Ollama's semantics) ---------------------------------------
def _reference_penalties(logits: list[float], context: list[int], params: SamplingParams) -> list[float]:
    """llama.cpp's llama_sampler_penalties_apply, written out token by token."""
    n = len(context) if params.penalty_last_n == -1 else params.penalty_last_n
    window = context[-n:] if n else []
    out = list(logits)
    for token in set(window):
        count = window.count(token)
        if out[token] > 0:
            out[token] /= params.repetition_penalty
        else:
            out[token] *= params.repetition_penalty
        out[token] -= count * params.frequency_penalty + params.presence_penalty
    return out


@pytest.mark.parametrize("last_n", [64, 5, -1, 0])
def test_penalties_match_llama_cpps_formula(last_n):
    from swarmllm.engine.sampling import apply_penalties

    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(50, generator=gen) * 3  # positive and negative logits
    context = torch.randint(0, 50, (40,), generator=gen).tolist() + [7, 7, 7]
    params = SamplingParams(repetition_penalty=1.3, frequency_penalty=0.4, presence_penalty=0.25, penalty_last_n=last_n)
    got = apply_penalties(logits, params, context)
    expected = torch.tensor(_reference_penalties(logits.tolist(), context, params))
    assert torch.allclose(got, expected, atol=1e-6)
    if last_n == 0:
        assert got is logits  # nothing to do


def test_greedy_with_a_repetition_penalty_leaves_a_loop():
    logits = torch.tensor([0.0, 5.0, 4.8, 1.0])
    plain, penalized = Sampler(SamplingParams()), Sampler(SamplingParams(repetition_penalty=1.1))
    assert plain.sample(logits, [1, 1]) == 1
    assert penalized.sample(logits, [1, 1]) == 2  # 5.0 / 1.1 < 4.8
    assert penalized.sample(logits, []) == 1      # nothing seen: nothing penalized
    assert penalized.sample(logits, [3, 99]) == 1  # an id outside the vocabulary counts for nothing


def test_frequency_counts_occurrences_and_presence_counts_once():
    logits = torch.tensor([3.0, 2.0, 0.0])
    freq = Sampler(SamplingParams(frequency_penalty=0.6))
    pres = Sampler(SamplingParams(presence_penalty=0.6))
    assert freq.sample(logits, [0]) == 0 and freq.sample(logits, [0, 0]) == 1  # 3 - 1.2 < 2
    assert pres.sample(logits, [0, 0, 0, 0]) == 0                               # 3 - 0.6 > 2


def test_min_p_drops_what_is_far_less_likely_than_the_best():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    probs = Sampler(SamplingParams(temperature=1.0, min_p=0.2)).distribution(logits)
    assert probs[3] == 0 and probs[2] > 0  # 0.05 < 0.2 * 0.5 <= 0.15
    assert torch.isclose(probs.sum(), torch.tensor(1.0))
    only_best = Sampler(SamplingParams(temperature=1.0, min_p=0.99)).distribution(logits)
    assert only_best.tolist() == [1.0, 0.0, 0.0, 0.0]


def test_the_distribution_takes_the_penalties_only_with_a_context():
    logits = torch.tensor([2.0, 1.0])
    sampler = Sampler(SamplingParams(temperature=1.0, repetition_penalty=2.0))
    assert torch.allclose(sampler.distribution(logits), torch.softmax(logits, -1))
    assert torch.allclose(sampler.distribution(logits, [0]), torch.softmax(torch.tensor([1.0, 1.0]), -1))


@pytest.mark.parametrize("bad, says", [(dict(min_p=1.0), "min_p"), (dict(repetition_penalty=0.0), "repetition_penalty"),
                                       (dict(frequency_penalty=2.5), "frequency_penalty"),
                                       (dict(presence_penalty=-3), "presence_penalty"),
                                       (dict(penalty_last_n=-2), "penalty_last_n")])
def test_out_of_range_penalties_are_clear(bad, says):
    with pytest.raises(ValueError, match=says):
        SamplingParams(**bad)


def test_generation_with_penalties_is_replayable_from_the_context():
    """iter_generate passes prompt + generated tokens: the same tokens come out of a fresh sampler fed them."""
    head = ScriptedHead([1, 1, 1, 1, 1, 1])  # a model that wants token 1 forever
    params = SamplingParams(repetition_penalty=10, presence_penalty=2, max_new_tokens=4, penalty_last_n=1)
    out = generate(head, FakeTokenizer(), lambda hidden, position: hidden, [2], params)
    # right after itself token 1's logit is 10 / 10 - 2 < 0: token 0 (logit 0, the first of the rest) comes between
    assert out.token_ids == [1, 0, 1, 0]
