"""The DHT validator and bounded storage every node runs (swarm/validation.py), without a network."""

from __future__ import annotations

from hivemind.dht.routing import DHTID
from hivemind.dht.storage import DictionaryDHTValue
from hivemind.dht.validation import DHTRecord
from hivemind.utils import MSGPackSerializer, get_dht_time

from signed_records import MODEL, envelope, forged, body_dict, server_record
from swarmllm.protocol import MODEL_REGISTRY_KEY, ModelRecord, block_key
from swarmllm.swarm.identity import Identity
from swarmllm.swarm.validation import BoundedStorage, NoStorage, RecordValidator

A = Identity.generate()
NOW = 1_000_000.0


def dht_record(key: str, subkey, value, expiration: float) -> DHTRecord:
    return DHTRecord(DHTID.generate(source=key).to_bytes(), MSGPackSerializer.dumps(subkey),
                     MSGPackSerializer.dumps(value), expiration)


def validator(known=None) -> RecordValidator:
    return RecordValidator(known or {MODEL: 30}, clock=lambda: NOW)


def test_the_validator_accepts_honest_records():
    key = block_key(MODEL, 3)
    assert validator().validate(dht_record(key, A.peer_id, envelope(A, key, server_record(A)), NOW + 10))
    registry = envelope(A, MODEL_REGISTRY_KEY, ModelRecord(model_id=MODEL, n_blocks=30))
    assert validator().validate(dht_record(MODEL_REGISTRY_KEY, A.peer_id, registry, NOW + 10))


def test_the_validator_refuses_what_the_envelope_does_not_back_and_never_raises():
    key, other = block_key(MODEL, 3), block_key(MODEL, 4)
    value = envelope(A, key, server_record(A))
    check = validator()
    refused = {
        "stored under another key's hash": dht_record(other, A.peer_id, value, NOW + 10),
        "stored with another expiration": dht_record(key, A.peer_id, value, NOW + 14),
        "a plain value (no subkey)": dht_record(key, None, value, NOW + 10),
        "n_blocks against the catalog": dht_record(key, A.peer_id, envelope(A, key, server_record(A, n_blocks=31)),
                                                   NOW + 10),
        "a forged body": dht_record(key, A.peer_id, forged(A, key, body_dict(server_record(A), end=99)), NOW + 10),
        "garbage bytes": DHTRecord(DHTID.generate(source=key).to_bytes(), MSGPackSerializer.dumps(A.peer_id),
                                   b"\xc1\xff\x00", NOW + 10),
        "an oversized value": DHTRecord(DHTID.generate(source=key).to_bytes(), MSGPackSerializer.dumps(A.peer_id),
                                        b"x" * 100_000, NOW + 10),
        "a list value": dht_record(key, A.peer_id, [1, 2, 3], NOW + 10),
    }
    assert [name for name, record in refused.items() if check.validate(record)] == []
    assert check.rejected == len(refused)


def _value(n: int = 100) -> bytes:
    return b"v" * n


def test_storage_bounds_writers_per_key_and_keeps_refreshing_those_it_holds():
    storage, key = BoundedStorage(max_per_key=3), DHTID.generate(source="k")
    later = get_dht_time() + 60
    assert all(storage.store(key, _value(), later, subkey=f"peer{i}") for i in range(3))
    assert not storage.store(key, _value(), later, subkey="peer3")  # full
    assert storage.store(key, _value(), later + 1, subkey="peer0")  # a refresh of a held entry
    assert storage.held(key) == 3 and storage.refused == 1
    assert storage.store(DHTID.generate(source="other"), _value(), later, subkey="peer3")  # other keys have room


def test_storage_bounds_entries_per_writer_and_in_all():
    storage = BoundedStorage(max_per_peer=2, max_total=4)
    later = get_dht_time() + 60
    keys = [DHTID.generate(source=f"k{i}") for i in range(6)]
    assert [storage.store(k, _value(), later, subkey="flooder") for k in keys[:3]] == [True, True, False]
    assert storage.held_by("flooder") == 2
    assert [storage.store(k, _value(), later, subkey=f"p{i}") for i, k in enumerate(keys)] == [True, True, False,
                                                                                               False, False, False]


def test_expired_entries_free_their_places():
    storage, key = BoundedStorage(max_per_key=1), DHTID.generate(source="k")
    now = get_dht_time()
    assert storage.store(key, _value(), now + 0.05, subkey="a")
    assert not storage.store(key, _value(), now + 60, subkey="b")
    while get_dht_time() < now + 0.06:
        pass
    assert storage.store(key, _value(), now + 60, subkey="b") and storage.held(key) == 1


def test_storage_refuses_plain_values_oversized_values_and_odd_subkeys():
    storage, key, later = BoundedStorage(max_value_bytes=1000), DHTID.generate(source="k"), get_dht_time() + 60
    assert not storage.store(key, _value(), later)  # a plain value would shadow the key's records
    assert not storage.store(key, _value(1001), later, subkey="a")
    assert not storage.store(key, _value(), later, subkey=7)
    whole = DictionaryDHTValue()
    whole.store("a", _value(), later)
    assert not storage.store(key, whole, later, subkey="a")
    assert storage.get(key) is None


def test_the_cache_stores_nothing():
    cache = NoStorage()
    assert not cache.store(DHTID.generate(source="k"), _value(), get_dht_time() + 60, subkey="a")
    assert cache.get(DHTID.generate(source="k")) is None


def test_an_announcement_is_signed_once_per_distinct_body_and_verifies_under_every_key():
    from swarmllm.swarm.node import seal_records

    record, registry = server_record(A, 0, 10), ModelRecord(model_id=MODEL, n_blocks=30)
    items = [(block_key(MODEL, b), record) for b in range(10)] + [(MODEL_REGISTRY_KEY, registry)]
    envelopes = seal_records(A, items, NOW + 10)
    assert [e.key for e in envelopes] == [key for key, _ in items]
    assert len({e.signature for e in envelopes}) == 2
    check = validator()
    assert all(check.validate(dht_record(e.key, A.peer_id, e.to_value(), NOW + 10)) for e in envelopes)
