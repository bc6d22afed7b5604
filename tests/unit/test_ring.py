"""Ring decoding pieces in isolation: the counter-based RNG, the server's RingState, the messages."""

from __future__ import annotations

import pytest
import torch

from swarmllm.engine.sampling import Sampler, SamplingParams
from swarmllm.protocol import (
    NextHop, ProtocolError, RingSampling, RingSpec, RingStop, RingToken, Step, TensorMeta, TokenResult, decode_frame,
    encode_frame,
)
from swarmllm.server.ring import RingState

SAMPLED = SamplingParams(temperature=0.8, top_k=40, top_p=0.9, seed=5)


def _logits(i: int) -> torch.Tensor:
    return torch.randn(300, generator=torch.Generator().manual_seed(i)) * 3


def test_sampler_state_is_the_draw_counter():
    """A sampler started at draw k continues exactly where one that made k draws is."""
    first = Sampler(SAMPLED)
    tokens = [first.sample(_logits(i)) for i in range(12)]
    assert first.draws == 12
    resumed = Sampler(SAMPLED, draws=5)
    assert [resumed.sample(_logits(i)) for i in range(5, 12)] == tokens[5:]
    other_seed = Sampler(SamplingParams(temperature=0.8, top_k=40, top_p=0.9, seed=6))
    assert [other_seed.sample(_logits(i)) for i in range(12)] != tokens


def test_greedy_draws_nothing():
    greedy = Sampler(SamplingParams())
    greedy.sample(_logits(0))
    assert greedy.draws == 0


class _Head:
    """Logits = the hidden vector itself (a 'model' whose vocabulary is the hidden size)."""

    def logits(self, hidden):
        return hidden.float()


def _spec(max_tokens=5, eos=(), seed=5, draws=0, temperature=0.8):
    return RingSpec(sampling=RingSampling(temperature=temperature, top_k=40, top_p=0.9, seed=seed, draws=draws),
                    max_tokens=max_tokens, eos_token_ids=eos, first_hop=NextHop(peer_id="A", session_id="s" * 8),
                    last_peer_id="C")


def test_ring_state_samples_like_the_client():
    ring = RingState.start(_spec(max_tokens=12), step_id=40)
    client = Sampler(SAMPLED)
    for i in range(12):
        token, finished = ring.next_token(_Head(), _logits(i), next_position=100 + i, max_length=1000)
        assert token == client.sample(_logits(i))
        assert finished == (i == 11)
    assert ring.sampler.draws == client.draws


def test_ring_state_ends_at_eos_and_at_the_session_limit():
    greedy = _spec(temperature=0.0, eos=(int(torch.argmax(_logits(0))),))
    token, finished = RingState.start(greedy, 0).next_token(_Head(), _logits(0), 10, 1000)
    assert finished and token in greedy.eos_token_ids
    _, finished = RingState.start(_spec(max_tokens=50), 0).next_token(_Head(), _logits(1), 64, max_length=64)
    assert finished  # no room left in the session for the token


def test_ring_state_covers_its_step_ids_only():
    ring = RingState.start(_spec(max_tokens=4), step_id=10)
    assert [ring.covers(i) for i in (9, 10, 13, 14)] == [False, True, True, False]


@pytest.mark.parametrize("message", [
    RingToken(session_id="x" * 16, step_id=3, position=17, token_id=42),
    TokenResult(session_id="x" * 16, step_id=3, position=17, token_id=42, draws=9, finished=True),
    RingStop(session_id="x" * 16),
    Step(session_id="x" * 16, step_id=0, start_position=0, tensor=TensorMeta(dtype="float32", shape=(1, 1, 4)),
         ring=_spec()),
])
def test_ring_messages_round_trip(message):
    payload = b"\0" * 16 if isinstance(message, Step) else b""
    decoded, rest = decode_frame(encode_frame(message, payload))
    assert decoded == message and bytes(rest) == payload


@pytest.mark.parametrize("bad", [
    {"type": "ring_token", "session_id": "x" * 16, "step_id": 1, "position": 3, "token_id": -1},
    {"type": "token_result", "session_id": "x" * 16, "step_id": 1, "position": 3, "token_id": 1},  # no draws
    {"type": "step", "session_id": "x" * 16, "step_id": 0, "start_position": 0,
     "tensor": {"dtype": "float32", "shape": [1, 1, 4]},
     "ring": {"sampling": {"temperature": 0.5, "top_p": 0.0}, "max_tokens": 4,
              "first_hop": {"peer_id": "A", "session_id": "s" * 8}}},
])
def test_malformed_ring_messages_are_rejected(bad):
    import json

    header = json.dumps(bad).encode()
    frame = len(header).to_bytes(4, "little") + header + (b"\0" * 16 if bad["type"] == "step" else b"")
    with pytest.raises(ProtocolError):
        decode_frame(frame)


def test_a_ring_starting_step_travels_as_json_and_plain_steps_stay_binary():
    meta = TensorMeta(dtype="int8", shape=(1, 1, 32))
    plain = Step(session_id="ab" * 16, step_id=7, start_position=3, tensor=meta)
    ring = Step(session_id="ab" * 16, step_id=7, start_position=3, tensor=meta, ring=_spec())
    from swarmllm.protocol.codec import tensor_nbytes

    raw = b"\0" * tensor_nbytes(meta)
    assert encode_frame(plain, raw)[:1] == b"S"
    assert encode_frame(ring, raw)[:1] == b"J"
    assert decode_frame(encode_frame(ring, raw))[0] == ring


PENALIZED = SamplingParams(temperature=0.8, top_k=40, top_p=0.9, seed=5, min_p=0.05, repetition_penalty=1.3,
                           frequency_penalty=0.5, presence_penalty=0.2, penalty_last_n=6)


def test_a_ring_with_penalties_samples_like_the_client_given_the_same_context():
    """The ring carries the penalty window of the context; the last server appends what it samples."""
    from swarmllm.client.ring import _sampling

    prompt = [5, 9, 9, 17, 250, 3, 3, 3]
    spec = RingSpec(sampling=_sampling(PENALIZED, 0, prompt), max_tokens=20, first_hop=NextHop(peer_id="A", session_id="s" * 8),
                    last_peer_id="C")
    assert spec.sampling.history == tuple(prompt[-6:])
    ring = RingState.start(spec, step_id=0)
    client, context = Sampler(PENALIZED), list(prompt)

    def logits(i):  # a model that keeps wanting token 3
        return _logits(i) + 12 * torch.nn.functional.one_hot(torch.tensor(3), 300)

    for i in range(20):
        token, _ = ring.next_token(_Head(), logits(i), next_position=100 + i, max_length=1000)
        expected = client.sample(logits(i), context)
        assert token == expected
        context.append(expected)
    unpenalized = Sampler(SAMPLED)
    assert [unpenalized.sample(logits(i)) for i in range(20)].count(3) > context[len(prompt):].count(3) + 5


def test_ring_sampling_without_penalties_is_v8s_bytes():
    """v9's fields are left out while they hold their defaults, so a v8 server (extra fields forbidden) parses it."""
    v8_fields = {"temperature", "top_k", "top_p", "seed", "draws"}
    plain = RingSampling(temperature=0.7, top_k=3, seed=2, draws=4)
    assert set(plain.model_dump()) == v8_fields and not plain.needs_v9
    penalized = RingSampling(repetition_penalty=1.1, history=(1, 2))
    assert set(penalized.model_dump()) == v8_fields | {"repetition_penalty", "history"} and penalized.needs_v9
    assert RingSampling.model_validate_json(penalized.model_dump_json()) == penalized
    with pytest.raises(ValueError):
        RingSampling(history=(-1,))
