"""Release records (protocol/releases.py): only a trusted release key's signature makes a release."""

import time

import pytest

from swarmllm.protocol.envelope import RecordRejected, SignedRecord, seal, with_key
from swarmllm.protocol.records import check_record
from swarmllm.protocol.releases import (
    PROJECT_RELEASE_KEYS, RELEASE_KEY, ReleaseRecord, parse_release_keys, read_release_file, release_file,
    sign_release, trusted_signers, verify_release, version_key,
)
from swarmllm.swarm.identity import Identity

NOW = time.time()


def _release(**changes) -> ReleaseRecord:
    fields = dict(version="0.1.1", protocol_version=7, min_protocol_version=7, wheel_name="swarmllm-0.1.1-py3-none-any.whl",
                  wheel_sha256="ab" * 32, wheel_size=12345, wheel_url="http://127.0.0.1:8000/w.whl", published_at=NOW)
    return ReleaseRecord(**{**fields, **changes})


def _key(identity: Identity) -> str:
    return identity.public_key[4:].hex()


def test_a_release_signed_by_a_trusted_key_verifies():
    key = Identity.generate()
    envelope = sign_release(_release(), public_key=key.public_key, sign=key.sign, expiration=NOW + 86400)
    assert verify_release(envelope, trusted_signers([_key(key)]), now=NOW).version == "0.1.1"


def test_a_release_signed_by_another_key_is_refused():
    key, hostile = Identity.generate(), Identity.generate()
    envelope = sign_release(_release(), public_key=hostile.public_key, sign=hostile.sign, expiration=NOW + 86400)
    with pytest.raises(RecordRejected, match="not a trusted release key"):
        verify_release(envelope, trusted_signers([_key(key)]), now=NOW)


def test_a_tampered_sha256_breaks_the_signature():
    key = Identity.generate()
    value = sign_release(_release(), public_key=key.public_key, sign=key.sign, expiration=NOW + 86400).to_value()
    value["body"] = value["body"].replace(b"ab" * 32, b"cd" * 32)
    with pytest.raises(RecordRejected, match="signature does not verify"):
        verify_release(value, trusted_signers([_key(key)]), now=NOW)


def test_expired_other_kinds_and_empty_ranges_are_refused():
    key = Identity.generate()
    trusted = trusted_signers([_key(key)])
    expired = sign_release(_release(), public_key=key.public_key, sign=key.sign, expiration=NOW - 1)
    with pytest.raises(RecordRejected, match="expired"):
        verify_release(expired, trusted, now=NOW)
    other = seal("demand", _release().model_dump_json().encode(), key=RELEASE_KEY, expiration=NOW + 60,
                 public_key=key.public_key, sign=key.sign)
    with pytest.raises(RecordRejected, match="not a release"):
        verify_release(other, trusted, now=NOW)
    empty = sign_release(_release(min_protocol_version=8), public_key=key.public_key, sign=key.sign,
                         expiration=NOW + 60)
    with pytest.raises(RecordRejected, match="range 8-7 is empty"):
        verify_release(empty, trusted, now=NOW)
    with pytest.raises(RecordRejected, match="not a signed release"):
        verify_release({"kind": "release"}, trusted, now=NOW)


def test_keys_parse_and_the_project_key_is_always_trusted():
    key = _key(Identity.generate())
    assert parse_release_keys(f" {key},{PROJECT_RELEASE_KEYS[0]} ") == [key, PROJECT_RELEASE_KEYS[0]]
    with pytest.raises(ValueError, match="not a release public key"):
        parse_release_keys("zz")
    assert len(trusted_signers()) == 1 and len(trusted_signers([key])) == 2


def test_a_release_file_carries_the_same_signed_envelope():
    key = Identity.generate()
    envelope = sign_release(_release(), public_key=key.public_key, sign=key.sign, expiration=NOW + 86400)
    value = read_release_file(release_file(envelope))
    assert value == envelope.to_value()
    assert verify_release(value, trusted_signers([_key(key)]), now=NOW).wheel_sha256 == "ab" * 32
    for junk in ("[]", "{", '{"body": "not base64!"}', "x" * 20000):
        with pytest.raises(RecordRejected):
            read_release_file(junk)


def test_versions_order_as_numbers_with_prereleases_first():
    ordered = ["0.1.0", "0.1.1rc1", "0.1.1", "0.9.1", "0.10.0", "1.0"]
    assert sorted(reversed(ordered), key=version_key) == ordered
    assert version_key("1.0") == version_key("1.0.0")
    with pytest.raises(ValueError, match="not a release version"):
        version_key("1.0-beta")


def test_dht_validators_take_releases_only_from_trusted_keys_and_for_long():
    key, hostile = Identity.generate(), Identity.generate()
    trusted = trusted_signers([_key(key)])
    year = NOW + 365 * 86400  # far beyond MAX_RECORD_TTL: releases alone may live that long
    good = sign_release(_release(), public_key=key.public_key, sign=key.sign, expiration=year).to_value()
    assert check_record(good, RELEASE_KEY, key.peer_id, now=NOW,
                        release_signers=trusted).version == "0.1.1"
    forged = sign_release(_release(version="9.9.9"), public_key=hostile.public_key, sign=hostile.sign,
                          expiration=year).to_value()
    with pytest.raises(RecordRejected, match="not a trusted release key"):
        check_record(forged, RELEASE_KEY, hostile.peer_id, now=NOW, release_signers=trusted)
    with pytest.raises(RecordRejected, match="not a trusted release key"):  # no keys given: nothing is trusted
        check_record(good, RELEASE_KEY, key.peer_id, now=NOW)
    with pytest.raises(RecordRejected, match="stored under"):
        check_record(with_key(SignedRecord.model_validate(good), "swarmllm.v1.models").to_value(), RELEASE_KEY,
                     key.peer_id, now=NOW, release_signers=trusted)
