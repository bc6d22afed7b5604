"""Signed DHT records: the envelope, every rule of check_record, and the readers' parsers."""

from __future__ import annotations

import pytest
from hivemind.p2p import PeerID
from hivemind.proto import crypto_pb2

from signed_records import MODEL, NOW, announcement, body_dict, envelope, forged, server_record
from swarmllm.protocol import (
    MAX_RECORD_TTL, MODEL_REGISTRY_KEY, ModelRecord, RecordRejected, ServerState, block_key, check_record,
    parse_model_records, parse_records,
)
from swarmllm.protocol.envelope import MAX_BODY_BYTES, peer_id_from_public_key
from swarmllm.protocol.records import MAX_MODEL_BLOCKS
from swarmllm.swarm.identity import Identity

A, B = Identity.generate(), Identity.generate()
KEY3 = block_key(MODEL, 3)


def check(value, key=KEY3, subkey=None, known=None):
    return check_record(value, key, A.peer_id if subkey is None else subkey, now=NOW, known_n_blocks=known or {})


def test_an_honest_record_passes_and_comes_back_as_its_body():
    record = server_record(A)
    assert check(envelope(A, KEY3, record)) == record
    registry = ModelRecord(model_id=MODEL, n_blocks=30)
    assert check(envelope(A, MODEL_REGISTRY_KEY, registry), key=MODEL_REGISTRY_KEY) == registry


def test_peer_id_is_derived_as_libp2p_derives_it():
    raw = A.public_key[4:]
    protobuf = crypto_pb2.PublicKey(key_type=crypto_pb2.Ed25519, data=raw).SerializeToString()
    assert A.public_key == protobuf
    identity_multihash = bytes([0x00, len(protobuf)]) + protobuf
    assert peer_id_from_public_key(A.public_key) == PeerID(identity_multihash).to_base58() == A.peer_id
    assert A.peer_id.startswith("12D3KooW")  # every Ed25519 peer id does


def test_a_moving_claim_may_be_stored_under_its_target_blocks():
    record = server_record(A, 0, 10, moving_to=(20, 25))
    assert check(envelope(A, block_key(MODEL, 22), record), key=block_key(MODEL, 22)) == record


def _flip(data: bytes, at: int = 5) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1:]


def _honest(**changes):
    value = envelope(A, KEY3, server_record(A))
    value.update(changes)
    return value


# (name, value, key, subkey, what the rejection says)
FORGERIES = [
    ("subkey is another peer's", envelope(A, KEY3, server_record(A)), KEY3, B.peer_id, "signed by peer"),
    ("speaks for another peer", envelope(A, KEY3, server_record(A, peer_id=B.peer_id)), KEY3, None, "signed by peer"),
    ("leaving, forever, for another peer",
     forged(A, KEY3, body_dict(server_record(B), state="leaving", announced_at=1e300), subkey=B.peer_id), KEY3,
     B.peer_id, "signed by peer"),
    ("bad signature", _honest(signature=_flip(envelope(A, KEY3, server_record(A))["signature"])), KEY3, None,
     "signature"),
    ("body changed after signing", _honest(body=envelope(A, KEY3, server_record(A, throughput=1e5))["body"]), KEY3,
     None, "signature"),
    ("re-stored with a later expiration", _honest(expiration=NOW + 14), KEY3, None, "signature"),
    ("span beyond the model", forged(A, KEY3, body_dict(server_record(A), end=40)), KEY3, None, "outside"),
    ("empty span", forged(A, KEY3, body_dict(server_record(A), start=3, end=3)), KEY3, None, "empty"),
    ("negative start", forged(A, KEY3, body_dict(server_record(A), start=-1)), KEY3, None, "start"),
    ("key its span does not cover", envelope(A, block_key(MODEL, 20), server_record(A, 0, 10)),
     block_key(MODEL, 20), None, "does not cover"),
    ("another model's key", envelope(A, block_key("other", 3), server_record(A)), block_key("other", 3), None,
     "does not cover"),
    ("block index spelled with a zero", envelope(A, block_key(MODEL, "03"), server_record(A)),
     block_key(MODEL, "03"), None, "does not cover"),
    ("addressed to another key", envelope(A, block_key(MODEL, 4), server_record(A)), KEY3, None, "addressed to"),
    ("a million blocks", forged(A, KEY3, body_dict(server_record(A), n_blocks=1_000_000)), KEY3, None, "n_blocks"),
    ("announced in the future", envelope(A, KEY3, server_record(A, announced_at=NOW + 60)), KEY3, None, "future"),
    ("announced at infinity", forged(A, KEY3, body_dict(server_record(A)) | {"announced_at": 1e999}), KEY3, None,
     "announced_at"),
    ("expires in an hour", envelope(A, KEY3, server_record(A), expiration=NOW + 3600), KEY3, None, "expires"),
    ("unknown field", forged(A, KEY3, body_dict(server_record(A), admin=True)), KEY3, None, "admin"),
    ("unknown kind", forged(A, KEY3, body_dict(server_record(A)), kind="receipt"), KEY3, None, "unknown kind"),
    ("throughput 1e12", forged(A, KEY3, body_dict(server_record(A), throughput=1e12)), KEY3, None, "throughput"),
    ("throughput NaN", forged(A, KEY3, body_dict(server_record(A)) | {"throughput": float("nan")}), KEY3, None,
     "throughput"),
    ("model id with a slash", forged(A, block_key("../m", 3), body_dict(server_record(A), model_id="../m")),
     block_key("../m", 3), None, "model_id"),
    ("registry entry under a block key", envelope(A, KEY3, ModelRecord(model_id=MODEL, n_blocks=30)), KEY3, None,
     "registry entry"),
    ("server record under the registry key", envelope(A, MODEL_REGISTRY_KEY, server_record(A)), MODEL_REGISTRY_KEY,
     None, "does not cover"),
    ("registry entry of a million blocks",
     forged(A, MODEL_REGISTRY_KEY, {"model_id": MODEL, "n_blocks": 1_000_000}, kind="model"), MODEL_REGISTRY_KEY,
     None, "n_blocks"),
    ("oversized body", forged(A, KEY3, b" " * (MAX_BODY_BYTES + 1)), KEY3, None, "body"),
    ("not an envelope", server_record(A).model_dump(mode="json"), KEY3, None, "not a valid signed record"),
    ("not a map", b"garbage", KEY3, None, "not a signed record"),
    ("an RSA key", _honest(public_key=b"\x08\x00\x12\x20" + bytes(32)), KEY3, None, "not an Ed25519 key"),
    ("subkey not a string", envelope(A, KEY3, server_record(A)), KEY3, 42, "signed by peer"),
    ("body in a string, not bytes", _honest(body=envelope(A, KEY3, server_record(A))["body"].decode()), KEY3, None,
     "body"),
]


@pytest.mark.parametrize("value, key, subkey, reason", [f[1:] for f in FORGERIES], ids=[f[0] for f in FORGERIES])
def test_forged_records_are_rejected_saying_why(value, key, subkey, reason):
    with pytest.raises(RecordRejected, match=reason):
        check(value, key=key, subkey=subkey)


def test_a_block_count_other_than_the_known_one_is_rejected():
    value = envelope(A, KEY3, server_record(A, n_blocks=31))
    assert check(value).n_blocks == 31  # nobody knows better
    with pytest.raises(RecordRejected, match="claims 31 blocks for m, which has 30"):
        check(value, known={MODEL: 30})
    registry = envelope(A, MODEL_REGISTRY_KEY, ModelRecord(model_id=MODEL, n_blocks=MAX_MODEL_BLOCKS))
    with pytest.raises(RecordRejected, match="which has 30"):
        check(registry, key=MODEL_REGISTRY_KEY, known={MODEL: 30})


def test_expiration_may_be_one_ttl_plus_the_clock_skew_ahead():
    assert check(envelope(A, KEY3, server_record(A), expiration=NOW + MAX_RECORD_TTL + 4))
    with pytest.raises(RecordRejected, match="expires"):
        check(envelope(A, KEY3, server_record(A), expiration=NOW + MAX_RECORD_TTL + 6))


def test_parse_records_keeps_verified_records_only_and_the_newest_per_peer():
    old = server_record(A, 0, 10, state=ServerState.LEAVING, announced_at=NOW - 5)
    new = server_record(A, 10, 20, announced_at=NOW - 4)
    honest_b = server_record(B, 20, 30)
    found = announcement(A, new) | announcement(B, honest_b)
    found[block_key(MODEL, 3)] = {A.peer_id: envelope(A, block_key(MODEL, 3), old),
                                  B.peer_id: forged(A, block_key(MODEL, 3), body_dict(server_record(B, 0, 10)),
                                                    subkey=B.peer_id),
                                  "junk": {"peer_id": 5}}
    found[block_key(MODEL, 25)][B.peer_id] = _flip(b"not even a map")
    found[block_key(MODEL, 21)][A.peer_id] = forged(A, block_key(MODEL, 21), body_dict(server_record(A, 20, 30),
                                                                                       n_blocks=3000))
    records = parse_records(found, MODEL, 30, now=NOW)
    assert sorted(records, key=lambda r: r.start) == [new, honest_b]
    assert parse_records(found, "other", now=NOW) == []


def test_parse_records_drops_records_of_another_block_count():
    record = server_record(A, 0, 10, n_blocks=31)
    assert parse_records(announcement(A, record), MODEL, now=NOW) == [record]
    assert parse_records(announcement(A, record), MODEL, 30, now=NOW) == []


def test_parse_records_drops_records_that_expired_beyond_the_ttl():
    record = server_record(A)
    assert parse_records(announcement(A, record, expiration=NOW + 3600), MODEL, 30, now=NOW) == []


def test_registry_entries_are_one_per_peer_and_most_peers_decide_n_blocks():
    C = Identity.generate()
    entries = {A.peer_id: envelope(A, MODEL_REGISTRY_KEY, ModelRecord(model_id=MODEL, n_blocks=30)),
               B.peer_id: envelope(B, MODEL_REGISTRY_KEY, ModelRecord(model_id=MODEL, n_blocks=30)),
               C.peer_id: envelope(C, MODEL_REGISTRY_KEY, ModelRecord(model_id=MODEL, n_blocks=4000)),
               "someone": forged(C, MODEL_REGISTRY_KEY, {"model_id": "x", "n_blocks": 5}, kind="model")}
    assert parse_model_records(entries, now=NOW) == {MODEL: ModelRecord(model_id=MODEL, n_blocks=30)}
    del entries[B.peer_id]  # one against one: the smaller count
    assert parse_model_records(entries, now=NOW)[MODEL].n_blocks == 30
    assert parse_model_records(entries, now=NOW, known_n_blocks={MODEL: 30})[MODEL].n_blocks == 30
