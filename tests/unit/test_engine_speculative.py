"""Speculative decoding: drafters, acceptance (greedy and sampled), draft length, and the
engine property it rests on (a short step's rows are exactly single-position steps)."""

from __future__ import annotations

import pytest
import torch

from swarmllm.engine.blocks import EXACT_STEP_POSITIONS, SpanModel
from swarmllm.engine.generation import generate
from swarmllm.engine.head import ModelHead
from swarmllm.engine.sampling import Sampler, SamplingParams
from swarmllm.engine.speculative import (
    Draft, DraftLength, NgramDrafter, Speculation, accept_draft, early_exit_drafter,
)
from swarmllm.models.catalog import resolve_model
from swarmllm.weights import load_blocks, load_head, read_config

from test_engine_sampling import EOS, FakeTokenizer, ScriptedHead, identity_forward, ids_of


# --- drafters ----------------------------------------------------------------------
def test_ngram_drafter_proposes_what_followed_the_latest_match():
    drafter = NgramDrafter(max_ngram=3, min_ngram=1)
    #          0  1  2  3  4  5  6  7  8  9
    context = [5, 6, 7, 8, 9, 1, 6, 7, 2, 6, 7]
    # the 3-gram [2, 6, 7] never occurred before; the 2-gram [6, 7] did, latest at 6
    assert drafter.draft(context, 4).tokens == [2, 6, 7]
    assert drafter.draft(context, 1).tokens == [2]
    assert drafter.draft([1, 2, 3, 1, 2], 3).tokens == [3, 1, 2]  # longest match first
    assert drafter.draft([1, 2, 3], 3).tokens == []  # nothing repeats: no draft
    assert drafter.draft(context, 0).tokens == []
    assert drafter.draft(context, 4).probs is None  # deterministic
    assert NgramDrafter().draft([4, 5, 9, 4], 2).tokens == []  # by default a lone token is no match
    assert NgramDrafter().draft([4, 5, 9, 4, 5], 2).tokens == [9, 4]
    with pytest.raises(ValueError):
        NgramDrafter(max_ngram=1, min_ngram=2)


# --- acceptance --------------------------------------------------------------------
def one_hot_logits(tokens: list[int], vocab: int = 8) -> list[torch.Tensor]:
    rows = []
    for t in tokens:
        row = torch.zeros(vocab)
        row[t] = 5.0
        rows.append(row)
    return rows


def test_greedy_acceptance_keeps_the_matching_prefix_and_adds_the_target_token():
    greedy = Sampler(SamplingParams())
    target = one_hot_logits([3, 4, 5, 6])
    assert accept_draft(Draft([3, 4, 5]), target.__getitem__, greedy) == [3, 4, 5, 6]  # all + bonus
    assert accept_draft(Draft([3, 1, 5]), target.__getitem__, greedy) == [3, 4]  # correction at the miss
    assert accept_draft(Draft([0, 4, 5]), target.__getitem__, greedy) == [3]
    assert accept_draft(Draft([]), target.__getitem__, greedy) == [3]
    reached = []
    accept_draft(Draft([0, 4, 5]), lambda i: reached.append(i) or target[i], greedy)
    assert reached == [0]  # rows past a rejection are never evaluated


def empirical(draft_fn, p_rows: list[torch.Tensor], params: SamplingParams, trials: int, position: int):
    """Frequencies of output token `position` over `trials` rounds (given it was produced)."""
    sampler = Sampler(params)
    counts = torch.zeros(p_rows[0].numel())
    for _ in range(trials):
        out = accept_draft(draft_fn(), lambda i: p_rows[i], sampler)
        if len(out) > position:
            counts[out[position]] += 1
    return counts / counts.sum()


@pytest.mark.parametrize("drafter", ["deterministic", "sampled"])
def test_speculative_sampling_keeps_the_target_distribution(drafter):
    """Rejection sampling must give exactly p, whatever q is (toy vocabulary, fixed seeds)."""
    logits = [torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, 1.5]), torch.tensor([0.0, 0.3, 2.0, -0.5, 1.0, 0.2]),
              torch.zeros(6)]  # the row after the draft (bonus token)
    params = SamplingParams(temperature=0.8, top_k=5, seed=7)
    target = [Sampler(params).distribution(row) for row in logits]  # what plain sampling draws from
    q = torch.tensor([[0.05, 0.1, 0.6, 0.05, 0.1, 0.1], [0.3, 0.3, 0.1, 0.1, 0.1, 0.1]])
    draw = torch.Generator().manual_seed(1)

    def draft() -> Draft:
        if drafter == "deterministic":  # e.g. n-gram: always proposes token 2 then 5 (p[0][2] is small)
            return Draft([2, 5])
        return Draft([int(torch.multinomial(q[i], 1, generator=draw)) for i in range(2)], q)

    for position in (0, 1):
        freq = empirical(draft, logits, params, 20000, position)
        assert (freq - target[position]).abs().max() < 0.015, (position, freq, target[position])


def test_a_wrong_residual_would_be_caught():
    """The statistical test has teeth: sampling from p instead of norm(max(0, p - q)) after a
    rejection over-represents the drafted token."""
    logits = [torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, 1.5])] * 2
    params = SamplingParams(temperature=1.0, seed=3)
    p = Sampler(params).distribution(logits[0])
    sampler = Sampler(params)
    hits = 0
    for _ in range(5000):  # the flawed rule: accept with p(x), else resample from p
        hits += 1 if sampler.uniform() < p[2] else sampler.sample_from(p) == 2
    assert abs(hits / 5000 - float(p[2])) > 0.03  # so the real test's 0.015 bound would fail it


def test_draft_length_adapts_to_acceptance():
    length = DraftLength(initial=4, max_k=8)
    for _ in range(10):
        length.update(drafted=length.k, accepted=length.k)
    assert length.k == 8
    for _ in range(10):
        length.update(drafted=length.k, accepted=0)
    assert length.k == 1
    fixed = DraftLength(max_k=5, adaptive=False)
    fixed.update(5, 0)
    assert fixed.k == 5
    with pytest.raises(ValueError, match="draft length"):
        DraftLength(max_k=EXACT_STEP_POSITIONS)


# --- the generation loop -------------------------------------------------------------
SCRIPTS = [ids_of("ab ab ab ab ab ab abc") + [EOS], ids_of("say end. say end. more"), ids_of("xyzxyzxyzxyzxyzxyz")]


@pytest.mark.parametrize("script", SCRIPTS, ids=["eos", "stop", "length"])
@pytest.mark.parametrize("max_length", [64, 12])
def test_greedy_speculation_produces_the_same_steps(script, max_length):
    """Tokens, streamed text deltas and finish reasons equal plain decoding's (scripted model)."""
    params = SamplingParams(max_new_tokens=16, stop=("end.",))

    def steps(speculation):
        from swarmllm.engine.generation import iter_generate
        return list(iter_generate(ScriptedHead(script), FakeTokenizer(), identity_forward, [0, 1], params,
                                  max_length, speculation))

    speculation = Speculation(NgramDrafter())
    assert steps(speculation) == steps(None)
    if max_length == 64 and script is SCRIPTS[2]:
        assert speculation.stats.accepted > 0  # the repeats were actually drafted and accepted


# --- the engine property and real-model greedy identity ------------------------------
@pytest.fixture(scope="module")
def source():
    return resolve_model("smollm2-135m")


@pytest.fixture(scope="module")
def config(source):
    return read_config(source)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kv_dtype", ["auto", "int8"])
def test_a_short_step_equals_single_steps_bit_for_bit(source, config, dtype, kv_dtype):
    """What verify steps and failover replays of cut steps rely on (see EXACT_STEP_POSITIONS)."""
    span = SpanModel(config, load_blocks(source, config, 0, 3, dtype), 0, 3, dtype)
    g = torch.Generator().manual_seed(0)
    prompt, chunk = torch.randn(1, 21, 576, generator=g), torch.randn(1, EXACT_STEP_POSITIONS, 576, generator=g)
    whole, single = span.new_cache(64, kv_dtype=kv_dtype), span.new_cache(64, kv_dtype=kv_dtype)
    span(prompt, whole, 0)
    span(prompt, single, 0)
    out = span(chunk, whole, 21)
    singles = torch.cat([span(chunk[:, t:t + 1], single, 21 + t) for t in range(chunk.shape[1])], dim=1)
    assert torch.equal(out, singles), (out.float() - singles.float()).abs().max()
    # a verify step of 6 rolled back to 2 accepted rows, then continued == the 2 rows sent alone
    cut, replay = span.new_cache(64, kv_dtype=kv_dtype), span.new_cache(64, kv_dtype=kv_dtype)
    for cache in (cut, replay):
        span(prompt, cache, 0)
    span(chunk[:, :6], cut, 21)
    span(chunk[:, :2], replay, 21)
    after_cut, after_replay = span(chunk[:, 6:9], cut, 23), span(chunk[:, 6:9], replay, 23)
    assert torch.equal(after_cut, after_replay)


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=pytest.mark.extended)], ids=str)
def test_real_model_greedy_speculation_equals_plain(source, config, dtype):
    from swarmllm.weights.tokenizer import load_tokenizer

    blocks = load_blocks(source, config, 0, config.n_blocks, dtype)
    span = SpanModel(config, blocks, 0, config.n_blocks, dtype)
    head = ModelHead(config, load_head(source, config, dtype), dtype)
    tokenizer = load_tokenizer(source)
    prompt = tokenizer.encode(tokenizer.apply_chat_template(
        [{"role": "user", "content": "Repeat this line twice: alpha_beta = gamma_delta + alpha_beta * 2"}],
        add_generation_prompt=True))
    params = SamplingParams(max_new_tokens=24)

    def run(speculation):
        cache = span.new_cache(96)
        return generate(head, tokenizer, lambda h, p: span(h, cache, p), prompt, params, 96, speculation)

    plain = run(None)
    for speculation in (Speculation(NgramDrafter()), Speculation(early_exit_drafter(head, span, 6, 96, params))):
        result = run(speculation)
        assert result.token_ids == plain.token_ids, speculation.drafter.name
        assert speculation.stats.rounds > 0
    sampled = SamplingParams(max_new_tokens=12, temperature=0.8, seed=5)
    again = [generate(head, tokenizer, lambda h, p, c=span.new_cache(96): span(h, c, p), prompt, sampled, 96,
                      Speculation(early_exit_drafter(head, span, 6, 96, sampled))).token_ids for _ in range(2)]
    assert again[0] == again[1]  # sampling with a model drafter is reproducible from the seed
