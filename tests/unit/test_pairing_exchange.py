"""Pairing (protocol/pairing.py, pairing.py) without a network: the code, the KDF, the record, the messages,
and the exchange over in-memory streams between two in-memory swarm peers (real envelopes and checks,
only the transport is replaced)."""

from __future__ import annotations

import asyncio
import time

import pytest

from signed_records import NOW, forged
from swarmllm.owners import OwnerKey, TrustStore
from swarmllm.pairing import find_waiting, join_pair, join_peer, wait_for_pair
from swarmllm.protocol import RecordRejected, check_record
from swarmllm.protocol.pairing import (
    CODE_LENGTH, PAIR_HANDLER, PairHello, PairingError, PairingRecord, decode_message, derive_secrets, encode_message,
    format_code, new_code, new_nonce, normalize_code, pairing_key, rendezvous_tag,
)
from swarmllm.swarm.identity import Identity
from swarmllm.swarm.node import StreamClosed, seal_records

CODE, WRONG = "7K2QF9XMAB", "7K2QF9XMAC"


# --- the code and what it derives ----------------------------------------------------
def test_codes_are_ten_crockford_characters_read_forgivingly():
    code = new_code()
    assert len(code) == CODE_LENGTH and normalize_code(code) == code and new_code() != code
    assert format_code(CODE) == "7K2QF-9XMAB"
    assert normalize_code(" 7k2qf-9xmab ") == CODE
    assert normalize_code("OI2QF-9XMAB") == normalize_code("01 2QF 9XMAB".replace(" ", "")) == "012QF9XMAB"
    assert normalize_code("L12QF9XMAB") == "112QF9XMAB"
    for bad in ("7K2QF-9XMA", "7K2QF-9XMABB", "7K2QF-9XMA!", "", "UUUUUUUUUU"):
        with pytest.raises(PairingError, match="is not a pairing code"):
            normalize_code(bad)


def test_the_kdf_gives_one_public_and_one_secret_value_per_code():
    began = time.perf_counter()
    secrets = derive_secrets(CODE)
    slow = time.perf_counter() - began
    assert derive_secrets("7k2qf-9xmab") == secrets
    assert len(secrets.rendezvous) == 32 and len(secrets.mac_key) == 32
    assert secrets.mac_key.hex() not in secrets.rendezvous
    other = derive_secrets(WRONG)
    assert other.rendezvous != secrets.rendezvous and other.mac_key != secrets.mac_key
    assert slow > 0.02  # scrypt with 64 MiB: an observer of DHT keys pays this for every guess of the code


# --- the record --------------------------------------------------------------------------
A, B = Identity.generate(), Identity.generate()
SECRETS = derive_secrets(CODE)
KEY = pairing_key(SECRETS.rendezvous)


def pairing_value(identity=A, key=KEY, **changes) -> dict:
    fields = dict(peer_id=identity.peer_id, tag=rendezvous_tag(SECRETS, identity.peer_id), expires_at=NOW + 300,
                  announced_at=NOW - 1)
    fields.update(changes)
    [value] = seal_records(identity, [(key, PairingRecord(**fields))], NOW + 10)
    return value.to_value()


def test_an_honest_pairing_record_passes_check_record():
    record = check_record(pairing_value(), KEY, A.peer_id, now=NOW)
    assert isinstance(record, PairingRecord) and record.peer_id == A.peer_id


@pytest.mark.parametrize("case, value, key, says", [
    ("for another peer", lambda: pairing_value(peer_id=B.peer_id), KEY, "signed by peer"),
    ("under a block key", lambda: pairing_value(key="swarmllm.v1.m.block3"), "swarmllm.v1.m.block3", "not a pairing key"),
    ("under a pairing key of another shape", lambda: pairing_value(key=KEY + "00"), KEY + "00", "not a pairing key"),
    ("valid for a day", lambda: pairing_value(expires_at=NOW + 86400), KEY, "more than 3600 s"),
    ("announced in the future", lambda: pairing_value(announced_at=NOW + 60), KEY, "in the future"),
    ("with an unknown field", lambda: forged(A, KEY, {"peer_id": A.peer_id, "tag": "0" * 32, "expires_at": NOW,
                                                      "admin": True}, kind="pairing"), KEY, "invalid pairing"),
    ("with a malformed tag", lambda: forged(A, KEY, {"peer_id": A.peer_id, "tag": "xyz", "expires_at": NOW},
                                             kind="pairing"), KEY, "invalid pairing"),
])
def test_a_bad_pairing_record_is_refused(case, value, key, says):
    with pytest.raises(RecordRejected, match=says):
        check_record(value(), key, A.peer_id, now=NOW)


def test_malformed_messages_are_refused_with_a_sentence():
    hello = PairHello(owner_key="ab" * 32, nonce=new_nonce())
    assert decode_message(encode_message(hello)) == hello
    for frame in (b"", b"{", b'{"type": "hello"}', b'{"type": "reboot"}', b"x" * 5000,
                  encode_message(hello).replace(b'"label":""', b'"label":"' + b"x" * 100 + b'"')):
        with pytest.raises(PairingError, match="malformed"):
            decode_message(frame)


# --- the exchange, over in-memory peers --------------------------------------------------
class MemoryStream:
    def __init__(self, inbox: asyncio.Queue, outbox: asyncio.Queue, remote_peer_id: str):
        self.inbox, self.outbox, self.remote_peer_id = inbox, outbox, remote_peer_id
        self.closed = False

    async def send(self, frame: bytes) -> None:
        if self.closed:
            raise StreamClosed("closed")
        await self.outbox.put(frame)

    async def recv(self) -> bytes:
        frame = await self.inbox.get()
        if frame is None:
            self.closed = True
            raise StreamClosed("closed")
        return frame

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.outbox.put_nowait(None)


class MemorySwarm:
    """A swarm peer whose DHT is a shared dict and whose streams are queue pairs (values are real envelopes)."""

    def __init__(self, world: dict, identity: Identity = None):
        self.world = world
        self.identity = identity or Identity.generate()
        self.peer_id = self.identity.peer_id
        self.handlers: dict = {}
        world.setdefault("peers", {})[self.peer_id] = self

    async def store_records(self, items, expiration_time: float) -> bool:
        for envelope in seal_records(self.identity, items, expiration_time):
            self.world.setdefault("dht", {}).setdefault(envelope.key, {})[self.peer_id] = envelope.to_value()
        return True

    async def get_records(self, keys):
        return {key: dict(self.world.get("dht", {}).get(key, {})) for key in keys}

    async def add_stream_handler(self, name, handler) -> None:
        self.handlers[name] = handler

    async def open_stream(self, peer_id, name, timeout=10.0):
        other = self.world["peers"][peer_id]
        there, back = asyncio.Queue(), asyncio.Queue()
        theirs = MemoryStream(there, back, self.peer_id)

        async def serve():
            try:
                await other.handlers[name](theirs)
            finally:
                theirs.close()

        asyncio.get_running_loop().create_task(serve())
        return MemoryStream(back, there, peer_id)


def clock() -> float:
    return time.time()


@pytest.fixture
def sides(tmp_path):
    """Two owners' machines: (owner, trust store, swarm peer) each, on one in-memory swarm."""
    world: dict = {}
    made = []
    for name in ("ana", "bo"):
        owner = OwnerKey.generate()
        made.append((owner, TrustStore(owner, tmp_path / f"{name}.sqlite"), MemorySwarm(world)))
    yield made
    for _, trust, _ in made:
        trust.close()


async def _waiting(side, code=CODE, **options):
    owner, trust, swarm = side
    ready = asyncio.Event()
    failures = []
    task = asyncio.ensure_future(wait_for_pair(swarm, owner, trust, code, clock=clock, label="Ana",
                                               on_waiting=lambda shown: ready.set(),
                                               on_failure=lambda *failure: failures.append(failure), **options))
    await asyncio.wait_for(ready.wait(), 10)
    return task, failures


def test_both_sides_end_trusting_each_other(sides):
    (ana, ana_trust, ana_swarm), (bo, bo_trust, bo_swarm) = sides

    async def run():
        waiting, failures = await _waiting(sides[0])
        joined = await join_pair(bo_swarm, bo, bo_trust, format_code(CODE).lower(), clock=clock, label="Bo")
        return await waiting, joined, failures

    waited, joined, failures = asyncio.run(run())
    assert failures == [] and waited.confirmed and joined.confirmed
    assert (waited.other.owner_id, waited.other.label, waited.peer_id) == (bo.owner_id, "Bo", bo_swarm.peer_id)
    assert (joined.other.owner_id, joined.other.label, joined.peer_id) == (ana.owner_id, "Ana", ana_swarm.peer_id)
    assert ana_trust.trusted_owner_ids() == {bo.owner_id} and bo_trust.trusted_owner_ids() == {ana.owner_id}
    assert waited.other.evidence == joined.other.evidence  # both hashed the same transcript


def test_a_wrong_code_fails_on_both_sides_and_three_end_the_wait(sides):
    (_, ana_trust, ana_swarm), (bo, bo_trust, bo_swarm) = sides

    async def run():
        waiting, failures = await _waiting(sides[0])
        errors = []
        for _ in range(3):  # a joiner that found the waiting peer (say, by watching the DHT) but guesses the code
            with pytest.raises(PairingError, match="refused: wrong code") as e:
                await join_peer(bo_swarm, bo, bo_trust, derive_secrets(WRONG), ana_swarm.peer_id)
            errors.append(e)
        with pytest.raises(PairingError, match="3 pairing attempts failed"):
            await waiting
        with pytest.raises(PairingError, match="used or has expired"):  # the right code is spent too
            await join_peer(bo_swarm, bo, bo_trust, SECRETS, ana_swarm.peer_id)
        return failures

    failures = asyncio.run(run())
    assert [(peer, reason, n) for peer, reason, n in failures] == [(bo_swarm.peer_id, "wrong code", n) for n in (1, 2, 3)]
    assert ana_trust.entries() == [] and bo_trust.entries() == []


def test_a_wrong_code_finds_nobody(sides):
    (_, _, _), (bo, bo_trust, bo_swarm) = sides

    async def run():
        waiting, failures = await _waiting(sides[0])
        with pytest.raises(PairingError, match="no machine is waiting for this code"):
            await join_pair(bo_swarm, bo, bo_trust, WRONG, clock=clock, lookup_timeout=0.5)
        waiting.cancel()
        return failures

    assert asyncio.run(run()) == [] and bo_trust.entries() == []


def test_the_code_is_single_use(sides, tmp_path):
    (ana, ana_trust, ana_swarm), (bo, bo_trust, bo_swarm) = sides
    carl = OwnerKey.generate()

    async def run():
        waiting, _ = await _waiting(sides[0])
        await join_pair(bo_swarm, bo, bo_trust, CODE, clock=clock)
        await waiting
        with TrustStore(carl, tmp_path / "carl.sqlite") as carl_trust:
            with pytest.raises(PairingError, match="used or has expired"):
                await join_peer(MemorySwarm(ana_swarm.world), carl, carl_trust, SECRETS, ana_swarm.peer_id)
            assert carl_trust.entries() == []

    asyncio.run(run())
    assert ana_trust.trusted_owner_ids() == {bo.owner_id}


def test_an_impostor_under_the_same_key_is_skipped(sides):
    """A peer that copied the rendezvous key from the DHT stores its own record there: its tag is wrong."""
    (ana, ana_trust, ana_swarm), (bo, bo_trust, bo_swarm) = sides
    impostor = MemorySwarm(ana_swarm.world)

    async def run():
        waiting, _ = await _waiting(sides[0])
        await impostor.store_records([(KEY, PairingRecord(peer_id=impostor.peer_id, tag="0" * 32,
                                                          expires_at=time.time() + 60, announced_at=time.time()))],
                                     time.time() + 10)
        assert await find_waiting(bo_swarm, SECRETS, clock=clock) == [ana_swarm.peer_id]
        await join_pair(bo_swarm, bo, bo_trust, CODE, clock=clock)
        await waiting

    asyncio.run(run())
    assert bo_trust.trusted_owner_ids() == {ana.owner_id}


def test_machines_of_one_owner_do_not_pair(sides, tmp_path):
    (ana, ana_trust, ana_swarm), _ = sides
    world = ana_swarm.world

    async def run():
        waiting, _ = await _waiting(sides[0])
        with TrustStore(ana, tmp_path / "ana-laptop.sqlite") as laptop_trust:
            with pytest.raises(PairingError, match="same owner key"):
                await join_pair(MemorySwarm(world), ana, laptop_trust, CODE, clock=clock)
            assert laptop_trust.entries() == []
        waiting.cancel()

    asyncio.run(run())
    assert ana_trust.entries() == []


def test_a_proof_with_a_bad_owner_signature_is_refused(sides, monkeypatch):
    """The joiner knows the code but signs with another key than the owner key it names."""
    (_, ana_trust, ana_swarm), (bo, bo_trust, bo_swarm) = sides
    monkeypatch.setattr(bo, "sign", OwnerKey.generate().sign)

    async def run():
        waiting, failures = await _waiting(sides[0])
        with pytest.raises(PairingError, match="refused: your owner signature does not verify"):
            await join_peer(bo_swarm, bo, bo_trust, SECRETS, ana_swarm.peer_id)
        waiting.cancel()
        return failures

    assert [reason for _, reason, _ in asyncio.run(run())] == ["its owner signature does not verify"]
    assert ana_trust.entries() == [] and bo_trust.entries() == []


def test_garbage_on_the_stream_counts_as_a_failed_attempt(sides):
    (_, ana_trust, ana_swarm), (_, _, bo_swarm) = sides

    async def run():
        waiting, failures = await _waiting(sides[0])
        stream = await bo_swarm.open_stream(ana_swarm.peer_id, PAIR_HANDLER)
        await stream.send(b"\xff" * 100)
        with pytest.raises(StreamClosed):
            await asyncio.wait_for(stream.recv(), 5)
        waiting.cancel()
        return failures

    assert [reason for _, reason, _ in asyncio.run(run())] == ["the other side sent a malformed pairing message"]
    assert ana_trust.entries() == []


def test_an_unused_code_expires(sides):
    async def run():
        waiting, _ = await _waiting(sides[0], lifetime=1.0)
        with pytest.raises(PairingError, match="nobody used the code"):
            await asyncio.wait_for(waiting, 15)

    asyncio.run(run())
