"""Owner certificates in a real swarm: a real server announces its owner's certificate and a client
classifies it by it; a hostile peer's records carrying someone else's certificate (or a forged,
expired one), and bad pairing records, are refused by every honest node's DHT validator.

A bootstrap and one node serving the whole model ([0, 30), --throughput given so it skips
measuring); the node's owner key is the test session's state folder's (tests/conftest.py), which
the processes inherit.
"""

from __future__ import annotations

import pytest

from hostile_peer import HostilePeer
from signed_records import body_dict, envelope, forged, server_record
from swarmllm.client.radius import Radius, radius_of
from swarmllm.client.swarm_client import SwarmClient
from swarmllm.owners import OwnerKey, owner_key
from swarmllm.protocol import block_key
from swarmllm.protocol.owners import issue_certificate
from swarmllm.protocol.pairing import PairingRecord, derive_secrets, pairing_key, rendezvous_tag
from swarmllm.harness.local_swarm import LocalSwarm
from swarmllm.swarm import BackgroundLoop, Identity, dht_time

pytestmark = pytest.mark.integration

MODEL, N_BLOCKS = "smollm2-135m", 30
KEY0 = block_key(MODEL, 0)


@pytest.fixture(scope="module")
def swarm1(tmp_path_factory):
    swarm = LocalSwarm(MODEL, [(0, N_BLOCKS)], node_args=("--throughput", "50"),
                       log_dir=tmp_path_factory.mktemp("owners"))
    swarm.start(timeout=180)
    try:
        yield swarm
    finally:
        swarm.stop()


@pytest.fixture(scope="module")
def client(swarm1):
    with SwarmClient.connect(swarm1.initial_peers, keep_state=False) as c:
        yield c


@pytest.fixture(scope="module")
def hostile(swarm1):
    loop = BackgroundLoop("hostile-owners")
    peer = loop.run(HostilePeer.join(swarm1.initial_peers))
    yield loop, peer
    loop.run(peer.shutdown(), timeout=10)
    loop.close()


def the_node_record(client, swarm1):
    [record] = [r for r in client.find_servers(MODEL, N_BLOCKS) if r.peer_id == swarm1.nodes[0].ready["peer_id"]]
    return record


def test_a_server_announces_its_owner_and_the_client_places_it_by_the_certificate(swarm1, client):
    record = the_node_record(client, swarm1)
    mine = owner_key().owner_id  # the state folder the node ran with
    assert record.owner is not None and record.owner.owner_id == mine and record.owner.node == record.peer_id
    assert radius_of(record, mine, frozenset(), now=dht_time()) == Radius.LOCAL
    assert radius_of(record, OwnerKey.generate().owner_id, {mine}, now=dht_time()) == Radius.TRUSTED
    assert radius_of(record, OwnerKey.generate().owner_id, frozenset(), now=dht_time()) == Radius.PUBLIC


def honest_peers(swarm1) -> list[str]:
    return [swarm1.bootstrap.ready["peer_id"], swarm1.nodes[0].ready["peer_id"]]


def store_everywhere(swarm1, hostile, items) -> dict[str, list[bool]]:
    loop, peer = hostile
    return {honest: loop.run(peer.store_at(honest, items), timeout=30) for honest in honest_peers(swarm1)}


def attack(name: str, client, swarm1) -> tuple:
    """The attack's (key, subkey, value, expiration), from a fresh attacker identity: an honest node
    refuses a second value under one (key, subkey) that does not expire later, whatever it holds, so
    reusing one attacker would make refusals pass for the wrong reason."""
    now, evil, evil_owner = dht_time(), Identity.generate(), OwnerKey.generate()
    exp = now + 14
    stolen = the_node_record(client, swarm1).owner  # the real node's certificate, as anyone can read it
    own = issue_certificate(evil_owner.public_key, evil_owner.sign, evil.peer_id, now=now - 60)
    secrets = derive_secrets("7K2QF9XMAB")
    pairing = PairingRecord(peer_id=evil.peer_id, tag=rendezvous_tag(secrets, evil.peer_id), expires_at=now + 300,
                            announced_at=now)
    pkey = pairing_key(secrets.rendezvous)

    def with_certificate(cert) -> tuple:
        record = server_record(evil, 0, N_BLOCKS, n_blocks=N_BLOCKS, model_id=MODEL, now=now, owner=cert)
        return KEY0, evil.peer_id, envelope(evil, KEY0, record, exp), exp

    made = {
        "control: its own owner's certificate": lambda: with_certificate(own),
        "control: a pairing record": lambda: (pkey, evil.peer_id, envelope(evil, pkey, pairing, exp), exp),
        "another node's certificate copied into its record": lambda: with_certificate(stolen),
        "a certificate claiming the victim's owner key": lambda: with_certificate(
            own.model_copy(update={"owner_key": stolen.owner_key})),
        "an expired certificate": lambda: with_certificate(issue_certificate(
            evil_owner.public_key, evil_owner.sign, evil.peer_id, now=now - 7200, lifetime=3600)),
        "a pairing record of another peer": lambda: (pkey, evil.peer_id, forged(
            evil, pkey, body_dict(pairing, peer_id=swarm1.nodes[0].ready["peer_id"]), kind="pairing",
            expiration=exp), exp),
        "a pairing record under a block key": lambda: (KEY0, evil.peer_id, envelope(evil, KEY0, pairing, exp), exp),
    }
    return made[name]()


ATTACKS = ["control: its own owner's certificate", "control: a pairing record",
           "another node's certificate copied into its record", "a certificate claiming the victim's owner key",
           "an expired certificate", "a pairing record of another peer", "a pairing record under a block key"]


@pytest.mark.parametrize("name", ATTACKS)
def test_every_honest_node_takes_the_controls_and_refuses_the_forgeries(swarm1, client, hostile, name):
    item = attack(name, client, swarm1)
    hostile[1].hold([item])  # and serves it to lookups
    answers = store_everywhere(swarm1, hostile, [item])
    expected = [True] if name.startswith("control") else [False]
    assert {peer: stored for peer, stored in answers.items() if stored != expected} == {}


def test_readers_never_see_a_record_with_the_victims_owner_but_another_signer(swarm1, client, hostile):
    victim = the_node_record(client, swarm1)
    copied = attack("another node's certificate copied into its record", client, swarm1)
    hostile[1].hold([copied])
    store_everywhere(swarm1, hostile, [copied])
    claiming = [r for r in client.find_servers(MODEL, N_BLOCKS) if r.owner and r.owner.owner_id == victim.owner.owner_id]
    assert [r.peer_id for r in claiming] == [victim.peer_id]
