"""Lying nodes attack a real swarm; verification catches, bans and routes around each (issue 12, point 5).

Swarm: honest nodes A, B on blocks [0, 15) and C, D on [15, 30) (real processes, real P2P). Each test
starts its liar (tests/adversarial/liar.py) on [15, 30), pins the session's first chain through it
(planned without C and D), generates greedily with a verification mode, and checks that the user's
text is the single-process reference, that the liar is banned (in the request's report and the
client's reputation) and that the chain at the end does not contain it. The client's reputation
starts empty in every test except where a test says otherwise.

Small setting: 12 new tokens per generation, one swarm for the module; a liar lives for its test.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from swarmllm.client.generation import ClientModel, GenerationOptions, Generator, generate_text
from swarmllm.client.receipts import list_sessions, session_receipts
from swarmllm.client.swarm_client import SwarmClient
from swarmllm.client.verification import VerificationError
from swarmllm.engine.sampling import SamplingParams
from swarmllm.harness.local_swarm import LocalSwarm

pytestmark = [pytest.mark.integration, pytest.mark.adversarial]

MODEL = "smollm2-135m"
PROMPT = "Name three rivers."
GREEDY = SamplingParams(max_new_tokens=12)
LIAR = str(Path(__file__).with_name("liar.py"))


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    s = LocalSwarm(MODEL, [(0, 15), (0, 15), (15, 30), (15, 30)], log_dir=tmp_path_factory.mktemp("liars"))
    s.start(timeout=240)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def model():
    return ClientModel.load(MODEL)


@pytest.fixture(scope="module")
def reference():
    return generate_text(MODEL, PROMPT, GREEDY)


def peer(node) -> str:
    return node.ready["peer_id"]


def start_liar(swarm, mode: str, name: str):
    node = swarm.add_node(15, 30, name=name, program=[sys.executable, LIAR, mode])
    swarm.wait_ready([node], timeout=240)
    return node


def generate_through(swarm, model, client: SwarmClient, liar_peer: str, verify: str, exclude=()):
    """A greedy generation whose first chain runs [15, 30) on `liar_peer` (failover replans freely)."""
    honest_tail = [peer(node) for node in swarm.nodes[2:4]]
    chain = client.plan(MODEL, 30, 64, exclude=[*honest_tail, *exclude])
    assert chain[-1].peer_id == liar_peer
    generator = Generator.swarm(model, client)
    with generator.start(model.prompt_ids(PROMPT), GenerationOptions(sampling=GREEDY, verify=verify),
                         chain=chain) as run:
        for _ in run:
            pass
    return run.result()


def assert_caught(result, client: SwarmClient, liar_peer: str, reference) -> None:
    assert result.token_ids == reference.token_ids
    assert liar_peer in result.verification.banned
    assert result.verification.mismatches >= 1
    assert client.reputation.is_banned(liar_peer)
    assert liar_peer not in {hop.peer_id for hop in result.route}


@pytest.mark.parametrize("mode,verify", [("noise:0.3", "sample"), ("nan", "strict"),
                                         pytest.param("zeros", "sample", marks=pytest.mark.extended),
                                         pytest.param("after:6", "sample", marks=pytest.mark.extended)])
def test_a_lying_node_is_caught_banned_and_routed_around(swarm, model, reference, mode, verify, tmp_path,
                                                        monkeypatch):
    """(a) perturbs outputs with probability p, (b) NaN or zeros, (c) behaves for 6 steps, then lies.
    The chain's end offers ring decoding, so these run in a ring (the last server samples). The audit
    trail marks the receipts: the liar's wrong step -1, the honest servers' checked steps 1."""
    monkeypatch.setenv("SWARMLLM_HOME", str(tmp_path))
    liar = start_liar(swarm, mode, f"liar-{mode.replace(':', '-')}")
    try:
        with SwarmClient.connect(swarm.initial_peers) as client:
            result = generate_through(swarm, model, client, peer(liar), verify)
            assert_caught(result, client, peer(liar), reference)
            assert result.verification.mode == verify and result.verification.steps_checked > 0
            client.receipts.flush()
            rows = [r for summary in list_sessions(client.receipts.path)
                    for r in session_receipts(summary.session_id, client.receipts.path)]
            assert any(r.peer_id == peer(liar) and r.verified == -1 for r in rows)
            assert not any(r.peer_id != peer(liar) and r.verified == -1 for r in rows)
            assert any(r.peer_id != peer(liar) and r.verified == 1 for r in rows)
    finally:
        liar.stop()


@pytest.mark.parametrize("verify", ["sample", pytest.param("strict", marks=pytest.mark.extended)])
def test_a_ring_end_that_picks_wrong_tokens_is_caught(swarm, model, reference, verify):
    """(d) computes honest hidden states but, as the ring's last server, sends the least likely token: the
    client samples from those hidden states itself (same RNG) and convicts it on its own signed word."""
    liar = start_liar(swarm, "ring-token", f"liar-ring-{verify}")
    try:
        with SwarmClient.connect(swarm.initial_peers, keep_state=False) as client:
            result = generate_through(swarm, model, client, peer(liar), verify)
            assert result.decoding == "ring"
            assert_caught(result, client, peer(liar), reference)
            assert result.verification.retracted_tokens == 0  # caught on arrival, before the token is used
    finally:
        liar.stop()


@pytest.mark.extended
def test_strict_never_hands_out_an_unverified_token(swarm, model, reference):
    """strict with a liar that lies on every step: no token ever came from its outputs (nothing retracted)."""
    liar = start_liar(swarm, "noise:1", "liar-strict")
    try:
        with SwarmClient.connect(swarm.initial_peers, keep_state=False) as client:
            result = generate_through(swarm, model, client, peer(liar), "strict")
            assert_caught(result, client, peer(liar), reference)
            assert result.verification.retracted_tokens == 0 and result.verification.rewinds == 0
            assert result.verification.exact_checks == result.verification.steps_checked  # one class: bit for bit
    finally:
        liar.stop()


def test_colluding_liars_are_caught_by_established_witnesses(swarm, model, reference):
    """(e) two liars that give the same wrong answer. The bound: a wrong output passes only if the span's
    server and its witness are both colluders, and an honest server is convicted only if the witness or
    the judge is one; witnesses and judges are chosen among established peers first. Here C and D have
    a clean record with this client (one verified generation through them), so they are asked first and
    the colluders vouch for nobody: the first liar is convicted by C and D (and the second too, if
    failover happens to pick it as the replacement); no honest server is banned."""
    with SwarmClient.connect(swarm.initial_peers, keep_state=False) as client:
        warm_up = generate_text(MODEL, PROMPT, GenerationOptions(sampling=SamplingParams(max_new_tokens=2),
                                                                 verify="strict"), client=client)
        assert not warm_up.verification.banned
        first, second = start_liar(swarm, "collude:1", "colluder-1"), start_liar(swarm, "collude:1", "colluder-2")
        try:
            result = generate_through(swarm, model, client, peer(first), "strict", exclude=[peer(second)])
            assert_caught(result, client, peer(first), reference)
            assert not client.reputation.is_banned(peer(swarm.nodes[2])) and \
                not client.reputation.is_banned(peer(swarm.nodes[3]))
            # the second colluder lies too: banned only if failover picked it and it was convicted in turn
            assert set(result.verification.banned) <= {peer(first), peer(second)}
        finally:
            first.stop()
            second.stop()


@pytest.mark.extended  # the default suite is over its 20-minute line on CI: `pytest -m extended` runs it
def test_a_server_that_stalls_steps_is_replaced_then_banned(swarm, model, reference):
    """(f) answers pings, never finishes a step: the receipts pin the stall on it (its upstream signed
    that it sent the step); it is replaced, and banned when it stalls again."""
    liar = start_liar(swarm, "stall", "staller")
    try:
        with SwarmClient.connect(swarm.initial_peers, keep_state=False) as client:
            for attempt in range(2):
                result = generate_through(swarm, model, client, peer(liar), "sample")
                assert result.token_ids == reference.token_ids
                assert peer(liar) in {p for f in result.failovers for p in f.peer_ids}
                assert peer(liar) not in {hop.peer_id for hop in result.route}
                client._bans.pop(peer(liar), None)  # the back-off only: pin the next session through it again
            assert client.reputation.is_banned(peer(liar))
    finally:
        liar.stop()


@pytest.mark.extended  # the default suite is at its 20-minute line
def test_a_server_that_reports_other_outputs_than_it_signed_is_banned(swarm, model, reference):
    """A server whose reported output (what witnesses are checked against) is not what its receipt
    hashes is caught on its own signed word: banned, replaced, and the text is the reference."""
    liar = start_liar(swarm, "report", "false-reporter")
    try:
        with SwarmClient.connect(swarm.initial_peers, keep_state=False) as client:
            result = generate_through(swarm, model, client, peer(liar), "sample")
            assert result.token_ids == reference.token_ids
            assert client.reputation.is_banned(peer(liar))
            assert peer(liar) not in {hop.peer_id for hop in result.route}
    finally:
        liar.stop()


def test_a_server_that_blames_its_neighbour_is_banned(swarm, model, reference):
    """(g) answers every step with an ErrorReply blaming the next (or previous) server. Believed once
    (that server is replaced); blaming again makes the reporter the suspect: it is replaced and banned."""
    liar = start_liar(swarm, "blame", "blamer")
    try:
        with SwarmClient.connect(swarm.initial_peers, keep_state=False) as client:
            result = generate_through(swarm, model, client, peer(liar), "sample")
            assert result.token_ids == reference.token_ids
            assert client.reputation.is_banned(peer(liar))
            assert peer(liar) not in {hop.peer_id for hop in result.route}
            honest = {peer(node) for node in swarm.nodes[:4]}
            assert not any(client.reputation.is_banned(p) for p in honest)
    finally:
        liar.stop()


@pytest.mark.extended  # the default run checks the same refusal through the gateway (tests/e2e)
def test_strict_fails_clearly_without_a_second_server(tmp_path, model):
    """strict needs an independent server per span: with one server per span the request fails with a
    sentence naming the span, and never returns an unverified token."""
    s = LocalSwarm(MODEL, [(0, 30)], log_dir=tmp_path)
    s.start(timeout=240)
    try:
        with SwarmClient.connect(s.initial_peers, keep_state=False) as client:
            with pytest.raises(VerificationError, match=r"second server for blocks \[0, 30\)"):
                generate_text(MODEL, PROMPT, GenerationOptions(sampling=GREEDY, verify="strict"), client=client)
            sample = generate_text(MODEL, PROMPT, GenerationOptions(sampling=GREEDY, verify="sample"), client=client)
            assert sample.verification.unverifiable and sample.verification.steps_checked == 0
    finally:
        s.stop()
