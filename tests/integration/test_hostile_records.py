"""A hostile peer joins a real 3-node swarm and forges DHT records; nobody takes them.

The hostile peer (hostile_peer.py: a real p2pd + Kademlia peer without swarmllm's validator)
sends each forgery straight to every honest DHT node (the bootstrap and the three servers)
and holds them in its own storage, where lookups find them. Every honest node must refuse
every forgery at store time, readers must never see one, and the client must still plan the
honest chain and generate exactly what one process generates. Then it floods the nodes with
valid records from hundreds of identities (bounded storage), and a killed node comes back
with its peer id (persistent identities).
"""

from __future__ import annotations

import json
import time

import pytest

from hostile_peer import HostilePeer
from signed_records import body_dict, envelope, forged, server_record
from swarmllm.client.generation import GenerationOptions, generate_text
from swarmllm.client.swarm_client import SwarmClient
from swarmllm.harness.local_swarm import LocalSwarm, even_spans
from swarmllm.engine.sampling import SamplingParams
from swarmllm.protocol import MODEL_REGISTRY_KEY, ModelRecord, ServerState, block_key
from swarmllm.protocol.records import MAX_RECORDS_PER_PEER, MAX_SUBKEYS_PER_KEY
from swarmllm.swarm import BackgroundLoop, Identity, dht_time

pytestmark = pytest.mark.integration

MODEL, N_BLOCKS = "smollm2-135m", 30
PROMPT = "Write a short story about a robot who learns to paint."
GREEDY = SamplingParams(max_new_tokens=16)
EVIL = Identity.generate()


@pytest.fixture(scope="module")
def swarm3(tmp_path_factory):
    """This module's own swarm: the hostile peer's valid records stay in its DHT, which no other module should
    route by."""
    swarm = LocalSwarm(MODEL, even_spans(N_BLOCKS, 3), log_dir=tmp_path_factory.mktemp("hostile-records"))
    try:
        yield swarm.start(timeout=180)
    finally:
        swarm.stop()


@pytest.fixture(scope="module")
def reference():
    return generate_text(MODEL, PROMPT, GREEDY)


@pytest.fixture(scope="module")
def client(swarm3):
    with SwarmClient.connect(swarm3.initial_peers) as c:
        yield c


@pytest.fixture(scope="module")
def hostile(swarm3):
    loop = BackgroundLoop("hostile")
    peer = loop.run(HostilePeer.join(swarm3.initial_peers))
    yield loop, peer
    loop.run(peer.shutdown(), timeout=10)
    loop.close()


def honest_peers(swarm) -> list[str]:
    return [swarm.bootstrap.ready["peer_id"]] + [node.ready["peer_id"] for node in swarm.nodes]


def store_everywhere(swarm, hostile, items) -> dict[str, list[bool]]:
    loop, peer = hostile
    return {honest: loop.run(peer.store_at(honest, items), timeout=30) for honest in honest_peers(swarm)}


def node1_value(client, swarm):
    """node1's real envelope under its first block, as the DHT holds it."""
    found = client.loop.run(client.swarm.get_records([block_key(MODEL, 10)]))[block_key(MODEL, 10)]
    return found[swarm.nodes[1].ready["peer_id"]]


def forgeries(client, swarm) -> dict[str, list]:
    """Each attack's items, from a new attacker identity (so that nothing it holds already could make a
    node refuse them for being older), expiring later than anything the victim holds."""
    now, victim, evil = dht_time(), swarm.nodes[1].ready["peer_id"], Identity.generate()
    key10, key0 = block_key(MODEL, 10), block_key(MODEL, 0)
    mine = server_record(evil, 0, 10, model_id=MODEL, now=now)
    exp, late = now + 14, now + 19  # late: beyond the victim's own record's expiration, within the bound
    replayed = dict(node1_value(client, swarm), expiration=late)  # keep a node alive after it is gone
    bad_signature = envelope(evil, key0, mine, exp)
    bad_signature["signature"] = bytes(64)
    victim_leaving = body_dict(mine, peer_id=victim, start=10, end=20, state="leaving", announced_at=now + 1e9)
    return {
        "leaving forever under another peer's id": [(key10, victim, forged(evil, key10, victim_leaving, expiration=late,
                                                                          subkey=victim), late)],
        "another peer's record replayed with a later expiration": [(key10, victim, replayed, late)],
        "a bad signature": [(key0, evil.peer_id, bad_signature, exp)],
        "a span beyond the model": [(block_key(MODEL, 25), evil.peer_id,
                                     forged(evil, block_key(MODEL, 25), body_dict(mine, start=25, end=40),
                                            expiration=exp), exp)],
        "an empty span": [(block_key(MODEL, 5), evil.peer_id,
                           forged(evil, block_key(MODEL, 5), body_dict(mine, start=5, end=5), expiration=exp), exp)],
        "a key its span does not cover": [(block_key(MODEL, 20), evil.peer_id,
                                           envelope(evil, block_key(MODEL, 20), mine, exp), exp)],
        "another block count than the catalog's": [
            (key0, evil.peer_id, envelope(evil, key0, server_record(evil, 0, 31, n_blocks=31, model_id=MODEL,
                                                                    now=now), exp), exp)],
        "a registry entry of 31 blocks for the catalog model": [
            (MODEL_REGISTRY_KEY, evil.peer_id,
             envelope(evil, MODEL_REGISTRY_KEY, ModelRecord(model_id=MODEL, n_blocks=31), exp), exp)],
        "a registry entry of a million blocks": [
            (MODEL_REGISTRY_KEY, evil.peer_id, forged(evil, MODEL_REGISTRY_KEY, {"model_id": "bogus",
                                                                                  "n_blocks": 1_000_000},
                                                      kind="model", expiration=exp), exp)],
        "announced in the future": [(key0, evil.peer_id,
                                     envelope(evil, key0, mine.model_copy(update={"announced_at": now + 60}), exp),
                                     exp)],
        "an expiration an hour ahead": [(key0, evil.peer_id, envelope(evil, key0, mine, now + 3600), now + 3600)],
        "an unknown field": [(key0, evil.peer_id, forged(evil, key0, body_dict(mine, admin=True), expiration=exp),
                              exp)],
        "a throughput of 1e12": [(key0, evil.peer_id, forged(evil, key0, body_dict(mine, throughput=1e12),
                                                              expiration=exp), exp)],
        "a plain value shadowing a block key": [(key0, None, envelope(evil, key0, mine, now + 3600), now + 3600)],
        "an oversized value": [(key0, evil.peer_id, {"padding": b"x" * 20_000}, exp)],
    }


ATTACKS = ["leaving forever under another peer's id", "another peer's record replayed with a later expiration",
           "a bad signature", "a span beyond the model", "an empty span", "a key its span does not cover",
           "another block count than the catalog's", "a registry entry of 31 blocks for the catalog model",
           "a registry entry of a million blocks", "announced in the future", "an expiration an hour ahead",
           "an unknown field", "a throughput of 1e12", "a plain value shadowing a block key", "an oversized value"]


def test_every_node_runs_p2pd_with_the_key_of_its_identity_file(swarm3):
    for name, proc in [("bootstrap", swarm3.bootstrap)] + [(node.name, node) for node in swarm3.nodes]:
        assert Identity.load(swarm3.identity_path(name)).peer_id == proc.ready["peer_id"]


def test_a_valid_claim_of_the_hostile_peer_is_stored_like_any_other(swarm3, client, hostile):
    """The control for the refusals below: the same store path takes a record that follows the rules
    (a claim about itself that it cannot back: it answers no ping, so routing will skip it)."""
    now = dht_time()
    claim = server_record(EVIL, 0, N_BLOCKS, n_blocks=N_BLOCKS, model_id=MODEL, now=now, throughput=1e8)
    items = [(block_key(MODEL, b), EVIL.peer_id, envelope(EVIL, block_key(MODEL, b), claim, now + 14), now + 14)
             for b in range(N_BLOCKS)]
    answers = store_everywhere(swarm3, hostile, items)
    assert all(all(stored) for stored in answers.values()), answers


@pytest.mark.parametrize("attack", ATTACKS)
def test_every_honest_node_refuses_the_forgery(swarm3, client, hostile, attack):
    items = forgeries(client, swarm3)[attack]
    hostile[1].hold(items)  # and serves it to every lookup that reaches it
    answers = store_everywhere(swarm3, hostile, items)
    assert {peer: stored for peer, stored in answers.items() if stored != [False] * len(items)} == {}  # answered: no


def test_readers_see_only_honest_records_and_the_client_generates_the_reference(swarm3, client, hostile, reference):
    honest = {node.ready["peer_id"]: (node.ready["start"], node.ready["end"]) for node in swarm3.nodes}
    records = client.find_servers(MODEL, N_BLOCKS)
    seen = {r.peer_id: (r.start, r.end) for r in records if r.peer_id != EVIL.peer_id}
    assert seen == honest
    assert all(r.state == ServerState.ONLINE and r.n_blocks == N_BLOCKS and r.throughput <= 1e8 for r in records)
    assert client.list_models() == {MODEL: ModelRecord(model_id=MODEL, n_blocks=N_BLOCKS)}
    chain = client.plan(MODEL, N_BLOCKS)
    assert [(link.peer_id, link.start, link.end) for link in chain] == \
        [(peer, *span) for peer, span in sorted(honest.items(), key=lambda item: item[1])]
    result = generate_text(MODEL, PROMPT, GenerationOptions(sampling=GREEDY, ring=False), client=client)
    assert result.token_ids == reference.token_ids and result.text == reference.text
    assert all(node.alive for node in swarm3.nodes) and swarm3.bootstrap.alive


def test_a_flood_of_valid_records_is_bounded_per_key_and_per_writer(swarm3, client, hostile, reference):
    now, key0 = dht_time(), block_key(MODEL, 0)
    sybils = [Identity.generate() for _ in range(MAX_SUBKEYS_PER_KEY + 40)]
    per_key = [(key0, s.peer_id, envelope(s, key0, server_record(s, 0, 1, model_id=MODEL, now=now), now + 14),
                now + 14) for s in sybils]
    models = [f"flood-{i}" for i in range(MAX_RECORDS_PER_PEER // N_BLOCKS + 2)]
    per_writer = [(block_key(m, b), EVIL.peer_id,
                   envelope(EVIL, block_key(m, b), server_record(EVIL, 0, N_BLOCKS, model_id=m, now=now), now + 14),
                   now + 14) for m in models for b in range(N_BLOCKS)]
    assert len(per_writer) > MAX_RECORDS_PER_PEER
    for peer, stored in store_everywhere(swarm3, hostile, per_key).items():
        # a few places under block 0 are held already (node0, the hostile peer's claim)
        assert MAX_SUBKEYS_PER_KEY - 4 <= sum(stored) < MAX_SUBKEYS_PER_KEY, (peer, sum(stored))
    stored_by_writer = {honest: 0 for honest in honest_peers(swarm3)}
    for start in range(0, len(per_writer), 150):
        for peer, stored in store_everywhere(swarm3, hostile, per_writer[start:start + 150]).items():
            stored_by_writer[peer] += sum(stored)
    # EVIL may still hold its claim's 30 records at every node (unless they expired)
    assert all(MAX_RECORDS_PER_PEER - N_BLOCKS <= n <= MAX_RECORDS_PER_PEER for n in stored_by_writer.values()), \
        stored_by_writer
    # The honest nodes go on refreshing the places they hold, and the swarm still serves.
    time.sleep(6)  # one announce period
    honest = {node.ready["peer_id"] for node in swarm3.nodes}
    assert honest <= {r.peer_id for r in client.find_servers(MODEL, N_BLOCKS) if r.announced_at > now}
    result = generate_text(MODEL, PROMPT, GenerationOptions(sampling=GREEDY, ring=False), client=client)
    assert result.token_ids == reference.token_ids
    assert all(node.alive for node in swarm3.nodes) and swarm3.bootstrap.alive


def test_a_killed_node_restarts_with_its_peer_id_and_serves_again(swarm3, client, reference):
    node = swarm3.nodes[1]
    before = node.ready["peer_id"]
    swarm3.kill(node)
    swarm3.restart(node, timeout=180)
    assert node.ready["peer_id"] == before
    result = generate_text(MODEL, PROMPT, GenerationOptions(sampling=GREEDY, ring=False), client=client)
    assert result.token_ids == reference.token_ids
    assert before in {link.peer_id for link in client.plan(MODEL, N_BLOCKS)}
    print(json.dumps({"restarted": before}))
