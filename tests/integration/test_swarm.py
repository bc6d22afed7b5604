"""A real bootstrap + 3 node processes on loopback: the swarm computes what one process does."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
import torch

from swarmllm.client.generation import GenerationOptions, generate_text
from swarmllm.client.routing import plan_chain
from swarmllm.client.session import PREFILL_CHUNK
from swarmllm.client.swarm_client import SwarmClient
from swarmllm.engine.sampling import SamplingParams
from swarmllm.protocol import (
    PUSH_HANDLER, SESSION_HANDLER, ErrorReply, OpenSession, RingStop, RingToken, SessionOpened, Step, StepReceipt,
    StepResult, decode_frame, decode_tensor, encode_frame, encode_tensor,
)
from swarmllm.protocol.receipts import digest, verify_receipt

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m"
PROMPT = "Write a short story about a robot who learns to paint."
GREEDY_48 = SamplingParams(max_new_tokens=48)


@pytest.fixture(scope="module")
def local_reference():
    return generate_text(MODEL, PROMPT, GREEDY_48)


@pytest.fixture(scope="module")
def client(swarm3):
    with SwarmClient.connect(swarm3.initial_peers) as c:
        yield c


@pytest.mark.parametrize("ring", [False, None], ids=["plain", "default-ring"])
def test_swarm_greedy_equals_local(swarm3, client, local_reference, ring):
    result = generate_text(MODEL, PROMPT, GenerationOptions(sampling=GREEDY_48, ring=ring), client=client)
    assert local_reference.generated_tokens >= 48
    assert result.token_ids == local_reference.token_ids
    assert result.text == local_reference.text
    assert result.route_text().count("->") == 2  # three hops: one per node
    assert (result.decoding == "ring") == (ring is None)  # through a swarm whose ends offer it, ring is the default


PENALIZED = SamplingParams(temperature=0.7, top_p=0.95, min_p=0.05, seed=11, repetition_penalty=1.3,
                           frequency_penalty=0.3, presence_penalty=0.2, penalty_last_n=16, max_new_tokens=40)


@pytest.fixture(scope="module")
def penalized_reference():
    return generate_text(MODEL, PROMPT, PENALIZED)


@pytest.mark.parametrize("ring", [False, None], ids=["plain", "ring"])
def test_penalties_and_min_p_through_the_swarm_equal_local(swarm3, client, penalized_reference, ring):
    """The ring's last server samples with the penalties from the context window the ring carries (protocol v9);
    unit/test_ring.py shows on the same sampler that the penalties change what is drawn."""
    local = penalized_reference
    result = generate_text(MODEL, PROMPT, GenerationOptions(sampling=PENALIZED, ring=ring), client=client)
    assert result.token_ids == local.token_ids and result.text == local.text
    assert result.decoding == ("ring" if ring is None else "plain")
    assert result.ring is None or not result.ring.plain_fallback  # a v9 chain: the ring itself sampled


def test_chain_uses_the_three_nodes(swarm3, client):
    chain = client.plan(MODEL, 30)
    assert [(link.start, link.end) for link in chain] == [(0, 10), (10, 20), (20, 30)]
    assert {link.peer_id for link in chain} == {n.ready["peer_id"] for n in swarm3.nodes[:3]}


def test_cli_generate_json_through_swarm(swarm3, local_reference):
    out = subprocess.run([sys.executable, "-m", "swarmllm.cli", "generate", "--model", MODEL, "--initial-peers",
                          ",".join(swarm3.initial_peers), "--max-new-tokens", "48", "--json", PROMPT],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["token_ids"] == local_reference.token_ids
    assert result["timings"]["ttft_s"] > 0 and result["timings"]["decode_tokens_per_s"] > 0
    assert [(hop["start"], hop["end"]) for hop in result["route"]] == [(0, 10), (10, 20), (20, 30)]
    assert all(hop["peer_id"] for hop in result["route"]) and result["decoding"] == "ring"


def _raw_session(client, peer_id, session_id, start, end, max_length=8):
    """Open a session on one node by hand, speaking the protocol directly."""
    async def run():
        stream = await client.swarm.open_stream(peer_id, SESSION_HANDLER)
        await stream.send(encode_frame(OpenSession(session_id=session_id, model_id=MODEL, start=start, end=end,
                                                   max_length=max_length)))
        reply, _ = decode_frame(await stream.recv())
        return stream, reply
    return client.loop.run(run())


def _send_recv(client, stream, frame):
    async def run():
        await stream.send(frame)
        return decode_frame(await stream.recv())
    return client.loop.run(run())


def test_malformed_messages_get_error_replies_and_node_keeps_serving(swarm3, client, local_reference):
    node = swarm3.nodes[1]
    peer_id = node.ready["peer_id"]
    stream, opened = _raw_session(client, peer_id, "m" * 16, 10, 20)
    assert isinstance(opened, SessionOpened)

    reply, _ = _send_recv(client, stream, b"\x00\x01garbage that is not a frame")
    assert isinstance(reply, ErrorReply) and reply.code == "malformed"

    meta, raw = encode_tensor(torch.zeros(1, 2, 100), "float32")  # wrong hidden size
    reply, _ = _send_recv(client, stream, encode_frame(Step(session_id="m" * 16, step_id=0, start_position=0,
                                                            tensor=meta), raw))
    assert reply.code == "bad_shape" and "576" in reply.message

    meta, raw = encode_tensor(torch.zeros(1, 1, 576), "float32")
    reply, _ = _send_recv(client, stream, encode_frame(Step(session_id="m" * 16, step_id=0, start_position=3,
                                                            tensor=meta), raw))
    assert reply.code == "position"
    reply, _ = _send_recv(client, stream, encode_frame(Step(session_id="x" * 16, step_id=0, start_position=0,
                                                            tensor=meta), raw))
    assert reply.code == "unknown_session"

    meta, raw = encode_tensor(torch.zeros(1, 9, 576), "float32")  # longer than max_length=8
    reply, _ = _send_recv(client, stream, encode_frame(Step(session_id="m" * 16, step_id=0, start_position=0,
                                                            tensor=meta), raw))
    assert reply.code == "too_long"

    # After all that, the session itself is intact and computes (this node is "last": no next hop).
    meta, raw = encode_tensor(torch.randn(1, 3, 576), "float32")
    reply, payload = _send_recv(client, stream, encode_frame(Step(session_id="m" * 16, step_id=1, start_position=0,
                                                                  tensor=meta), raw))
    assert isinstance(reply, StepResult) and decode_tensor(reply.tensor, payload).shape == (1, 3, 576)
    # ... and signs a receipt for it (protocol v4): the bytes it got and sent, its own key.
    receipt, _ = decode_frame(client.loop.run(stream.recv()))
    assert isinstance(receipt, StepReceipt) and (receipt.step_id, receipt.positions, receipt.start) == (1, 3, 10)
    assert receipt.input_hash == digest(raw) and receipt.output_hash == digest(payload)
    verify_receipt(receipt, peer_id)
    # The same step again (a duplicate or a retry that arrives late) is never applied twice.
    reply, _ = _send_recv(client, stream, encode_frame(Step(session_id="m" * 16, step_id=1, start_position=3,
                                                            tensor=meta), raw))
    assert isinstance(reply, ErrorReply) and reply.code == "stale_step"
    stream.close()

    assert node.alive
    result = generate_text(MODEL, PROMPT, GREEDY_48, client=client)
    assert result.token_ids == local_reference.token_ids


def test_bad_ring_messages_get_clear_errors_and_node_keeps_serving(swarm3, client, local_reference):
    """A ring token for no session, or for a session with no ring from that peer, and a ring stop for no session."""
    node = swarm3.nodes[0]
    peer_id = node.ready["peer_id"]
    stream, opened = _raw_session(client, peer_id, "r" * 16, 0, 10)
    assert isinstance(opened, SessionOpened)
    push = client.loop.run(client.swarm.open_stream(peer_id, PUSH_HANDLER))
    reply, _ = _send_recv(client, push, encode_frame(RingToken(session_id="nobody" * 3, step_id=1, position=0,
                                                               token_id=5)))
    assert isinstance(reply, ErrorReply) and reply.code == "unknown_session"

    # Ring tokens come only from the last server of a ring running from this node (tests/integration/
    # test_hostile_peers.py attacks with them); the sender hears why, the session is untouched.
    reply, _ = _send_recv(client, push, encode_frame(RingToken(session_id="r" * 16, step_id=1, position=0,
                                                               token_id=5)))
    assert isinstance(reply, ErrorReply) and reply.code == "forbidden" and "last server" in reply.message
    reply, _ = _send_recv(client, stream, encode_frame(RingStop(session_id="nobody" * 3)))
    assert isinstance(reply, ErrorReply) and reply.code == "unknown_session"
    meta, raw = encode_tensor(torch.randn(1, 1, 576), "float32")
    reply, payload = _send_recv(client, stream, encode_frame(Step(session_id="r" * 16, step_id=2, start_position=0,
                                                                  tensor=meta), raw))
    assert isinstance(reply, StepResult) and reply.step_id == 2 and decode_tensor(reply.tensor, payload).shape[1] == 1
    push.close()
    stream.close()
    assert node.alive
    result = generate_text(MODEL, PROMPT, GenerationOptions(sampling=GREEDY_48, ring=True), client=client)
    assert result.decoding == "ring" and result.token_ids == local_reference.token_ids


def test_out_of_capacity_is_a_clear_error(swarm3, client):
    peer_id = swarm3.nodes[0].ready["peer_id"]
    stream, reply = _raw_session(client, peer_id, "c" * 16, 0, 10, max_length=4096)
    assert isinstance(reply, SessionOpened)  # within the node's limit
    stream2, reply2 = _raw_session(client, peer_id, "d" * 16, 0, 10, max_length=131072)
    assert isinstance(reply2, ErrorReply) and reply2.code in ("too_long", "out_of_capacity")
    stream.close(), stream2.close()


@pytest.mark.extended  # a fourth node (~10 s); overlapping spans are planned in tests/unit/test_routing.py
def test_overlapping_fourth_node_does_not_break_routing(swarm3, client, local_reference):
    extra = swarm3.add_node(5, 25, name="overlap")
    swarm3.wait_ready([extra], timeout=180)
    records = []
    for _ in range(50):  # the DHT needs a moment to show the new record
        records = client.find_servers(MODEL, 30)
        if len(records) == 4:
            break
    assert len(records) == 4
    chain = plan_chain(MODEL, 30, records, client.ping(r.peer_id for r in records))
    assert chain[0].start == 0 and chain[-1].end == 30
    result = generate_text(MODEL, PROMPT, GREEDY_48, client=client)
    assert result.token_ids == local_reference.token_ids


def test_a_bad_step_does_not_disturb_concurrent_steps_of_other_sessions(swarm3, client):
    """Steps of three sessions arrive together (they may share a batch); the bad one fails alone."""
    peer_id = swarm3.nodes[2].ready["peer_id"]  # the last node: it answers with StepResult
    g = torch.Generator().manual_seed(3)
    inputs = [torch.randn(1, 2, 576, generator=g) for _ in range(3)]

    def steps(prefix, bad):
        frames = []
        for i, x in enumerate(inputs):
            meta, raw = encode_tensor(x, "float32")
            position = 5 if (bad and i == 1) else 0  # a gap: this session has nothing cached
            frames.append(encode_frame(Step(session_id=f"{prefix}{i}" * 16, step_id=0, start_position=position,
                                            tensor=meta), raw))
        return frames

    def run_together(prefix, bad):
        streams = [_raw_session(client, peer_id, f"{prefix}{i}" * 16, 20, 30)[0] for i in range(3)]

        async def run():
            await asyncio.gather(*(s.send(f) for s, f in zip(streams, steps(prefix, bad))))
            return [decode_frame(await s.recv()) for s in streams]
        try:
            return client.loop.run(run())
        finally:
            for s in streams:
                s.close()

    alone = [client.loop.run(_one_step(client, peer_id, f"r{i}" * 16, frame)) for i, frame in enumerate(steps("r", False))]
    together = run_together("t", bad=True)
    assert isinstance(together[1][0], ErrorReply) and together[1][0].code == "position"
    for i in (0, 2):
        assert isinstance(together[i][0], StepResult)
        assert torch.equal(decode_tensor(together[i][0].tensor, together[i][1]),
                           decode_tensor(alone[i][0].tensor, alone[i][1]))


async def _one_step(client, peer_id, session_id, frame):
    stream = await client.swarm.open_stream(peer_id, SESSION_HANDLER)
    try:
        await stream.send(encode_frame(OpenSession(session_id=session_id, model_id=MODEL, start=20, end=30,
                                                   max_length=8)))
        decode_frame(await stream.recv())
        await stream.send(frame)
        return decode_frame(await stream.recv())
    finally:
        stream.close()


LONG_PROMPT = " ".join(["The history of the bicycle starts in the early nineteenth century, when inventors tried "
                        "to build a machine that a person could ride without a horse."] * 25) + \
    " Summarise the text above in one sentence."


@pytest.mark.extended  # ~19 s; the default run's swarm == local cases prefill through the same chain
def test_pipelined_prefill_of_a_long_prompt_equals_local(client):
    params = SamplingParams(max_new_tokens=16)
    local = generate_text(MODEL, LONG_PROMPT, params)  # chunked like the swarm: same computation
    assert local.prompt_tokens > 2 * PREFILL_CHUNK  # at least three chunks in flight at once
    swarm = generate_text(MODEL, LONG_PROMPT, GenerationOptions(sampling=params, ring=False), client=client)
    assert swarm.token_ids == local.token_ids
    # Ring decoding prefills all but the last chunk the same way and starts the ring with it.
    ring = generate_text(MODEL, LONG_PROMPT, params, client=client)
    assert ring.decoding == "ring" and ring.token_ids == local.token_ids
    # Chunking changes rounding, not the answer: greedy tokens of a one-piece prefill agree here.
    assert generate_text(MODEL, LONG_PROMPT, GenerationOptions(sampling=params, prefill_chunk=None)).token_ids == local.token_ids
