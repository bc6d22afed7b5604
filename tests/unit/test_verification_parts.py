"""The pure parts of verification (issue 12): comparing outputs, chunk plans, retractions, rewinding."""

from __future__ import annotations

import pytest
import torch

from swarmllm.client.compare import class_epsilon, exact_comparison, first_disagreement, token_agrees, tolerance
from swarmllm.client.session import committed_chunks
from swarmllm.client.verification import Rewind, chunk_start
from swarmllm.client.verified_decoding import RewindingDecoder
from swarmllm.client.witness import chunk_plan
from swarmllm.engine.generation import Retract, _steps
from swarmllm.engine.sampling import Sampler, SamplingParams

F32 = "float32.none.auto.avx2-amd.r1.t2.aaaaaaaaaaaa"
F32_OTHER = "float32.none.auto.avx2-amd.r1.t1.bbbbbbbbbbbb"
BF16 = "bfloat16.none.auto.avx512-bf16.r4.t2.cccccccccccc"


def test_same_class_same_chunks_is_bit_for_bit_and_anything_else_is_tolerance():
    assert exact_comparison([F32], [F32], same_chunks=True)
    assert not exact_comparison([F32], [F32], same_chunks=False)
    assert not exact_comparison([F32], [F32_OTHER], same_chunks=True)
    assert not exact_comparison([""], [""], same_chunks=True)  # an unknown class is never compared exactly
    assert class_epsilon(BF16) > class_epsilon(F32) > 0
    assert tolerance([F32], [F32_OTHER]) < 1e-4 < tolerance([BF16], [F32])
    assert tolerance([F32], [F32], "int8") > tolerance([F32], [F32], "float32")


def test_first_disagreement_finds_the_first_wrong_row():
    a = torch.randn(6, 32)
    assert first_disagreement(a, a.clone(), exact=True, rel_tolerance=0) is None
    b = a.clone()
    b[4, 3] = b[4, 3].nextafter(torch.tensor(1e9))  # one ulp
    assert first_disagreement(a, b, exact=True, rel_tolerance=0) == 4
    assert first_disagreement(a, b, exact=False, rel_tolerance=1e-5) is None
    b[2] += 0.1 * a[2].abs().max()
    assert first_disagreement(a, b, exact=False, rel_tolerance=1e-5) == 2
    nan = a.clone()
    nan[1, 0] = float("nan")
    assert first_disagreement(a, nan, exact=False, rel_tolerance=1.0) == 1  # NaN never agrees
    assert first_disagreement(nan, nan.clone(), exact=True, rel_tolerance=0) == 1
    assert first_disagreement(a, a[:5], exact=True, rel_tolerance=0) == 0  # a wrong shape is a disagreement


def test_tokens_agree_exactly_within_float32_and_within_the_margin_across_classes():
    logits = torch.tensor([0.0, 5.0, 4.95, 1.0])
    assert token_agrees(logits, 1, 1, F32)
    assert not token_agrees(logits, 1, 2, F32)          # float32 head: the same token or a lie
    assert token_agrees(logits, 1, 2, BF16)             # a 0.05 lead is inside bfloat16's margin
    assert not token_agrees(logits, 1, 0, BF16)
    assert not token_agrees(logits, 1, 99, BF16)        # not even a token


def test_chunk_plans_follow_the_session_or_merge():
    chunks = [23, 1, 1, 5, 1]
    assert chunk_plan(0, 31, chunks, exact=True) == [(0, 23), (23, 1), (24, 1), (25, 5), (30, 1)]
    assert chunk_plan(24, 30, chunks, exact=True) == [(24, 1), (25, 5)]
    assert chunk_plan(0, 31, chunks, exact=False) == [(0, 31)]
    assert chunk_plan(10, 600, [600], exact=False, merge=256) == [(10, 256), (266, 256), (522, 78)]
    with pytest.raises(ValueError):
        chunk_plan(5, 20, chunks, exact=True)
    assert chunk_start(chunks, 0) == 0 and chunk_start(chunks, 22) == 0 and chunk_start(chunks, 27) == 25
    assert chunk_start(chunks, 99) == 31


def test_committed_chunks_cut_on_rollback():
    assert committed_chunks([10, 1, 1], 12, 1) == [10, 1, 1, 1]
    assert committed_chunks([10, 5], 12, 3) == [10, 2, 3]   # a verify step rolled back into the last chunk
    assert committed_chunks([10, 5], 15, 0)[:-1] == [10, 5]
    assert committed_chunks([10, 5], 10, 0)[:-1] == [10]


class _Tokens:
    eos_token_ids = (0,)

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(ord("a") + i % 26) for i in ids)


def test_a_retraction_takes_back_tokens_and_the_text_already_yielded():
    tokens = iter([1, 2, 3, Retract(1), 4, 5])
    steps = list(_steps(tokens, _Tokens(), [7], SamplingParams(max_new_tokens=4), 100))
    text = ""
    ids = []
    for step in steps:
        if step.retracted_tokens:
            del ids[-step.retracted_tokens:]
        text = text[:len(text) - step.retracted_chars] + step.text_delta
        ids.append(step.token_id)
    assert ids == [1, 4, 5] and text == "bef"
    assert [s.retracted_tokens for s in steps] == [0, 0, 0, 2, 0]


class _Head:
    """A toy head: the next token is (position of the hidden state + 1) % 50, embedded as its id."""

    def embed(self, ids):
        return torch.tensor(ids, dtype=torch.float32).reshape(1, -1, 1)

    def logits(self, hidden):
        out = torch.zeros(1, 1, 50)
        out[0, 0, int(hidden.reshape(-1)[-1]) % 50] = 1.0
        return out


def test_the_rewinding_decoder_regenerates_from_the_verified_position():
    calls = []
    rewound = []

    def forward(hidden, start):
        calls.append((start, hidden.shape[1]))
        if start == 7 and not rewound:  # the check of this step convicts a liar at position 5
            rewound.append(True)
            raise Rewind(5, "liar", (0, 10), 5)
        return hidden + 1  # token out = token in + 1

    decoder = RewindingDecoder()
    out = decoder.tokens(_Head(), forward, [10, 11, 12], Sampler(SamplingParams()), 100, 8)
    got = [next(out) for _ in range(8)]
    # 13 is sampled from position 2's output, 14 from 3's, ...: a liar at position 5 takes back 16 and 17
    assert got == [13, 14, 15, 16, 17, Retract(3), 16, 17]
    assert calls[:6] == [(0, 3), (3, 1), (4, 1), (5, 1), (6, 1), (7, 1)] and calls[6] == (5, 1)
    assert decoder.rewinds == 1
