"""Owner certificates (protocol/owners.py), their check in server records, the owner key file and
the trusted-owners store (owners.py)."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import stat
from concurrent.futures import ProcessPoolExecutor

import pytest
from hivemind.utils import MSGPackSerializer

from signed_records import MODEL, NOW, body_dict, envelope, forged, server_record
from swarmllm.owners import (
    CERTIFICATE_BACKDATE, NodeCertificates, OwnerKey, OwnerKeyError, TrustStore, default_owner_key_path, owner_key,
)
from swarmllm.protocol import RecordRejected, block_key, check_record
from swarmllm.protocol.envelope import MAX_BODY_BYTES, MAX_RECORD_BYTES, seal
from swarmllm.protocol.owners import (
    MAX_CERTIFICATE_LIFETIME, MAX_CLOCK_SKEW as OWNERS_SKEW, certificate_payload, is_owner_id, issue_certificate,
    owner_id, verify_certificate,
)
from swarmllm.protocol.records import MAX_ADDRESSES, MAX_CLOCK_SKEW, ComputeClass
from swarmllm.swarm.identity import Identity

NODE, OTHER_NODE = Identity.generate(), Identity.generate()
OWNER, OTHER_OWNER = OwnerKey.generate(), OwnerKey.generate()
KEY3 = block_key(MODEL, 3)
DAY = 86400.0


def certificate(owner: OwnerKey = OWNER, node: Identity = NODE, now: float = NOW - 60, lifetime: float = 30 * DAY):
    return issue_certificate(owner.public_key, owner.sign, node.peer_id, now=now, lifetime=lifetime)


def _flip_hex(text: str, at: int = 10) -> str:
    return text[:at] + ("1" if text[at] != "1" else "2") + text[at + 1:]


# --- certificates --------------------------------------------------------------------
def test_a_certificate_verifies_for_its_node_inside_its_window():
    cert = certificate()
    assert verify_certificate(cert, NODE.peer_id, now=NOW) == cert
    assert cert.owner_id == OWNER.owner_id == owner_id(OWNER.public_key) == owner_id(bytes.fromhex(OWNER.public_key))
    assert verify_certificate(cert, NODE.peer_id, now=cert.issued_at - MAX_CLOCK_SKEW + 1, ) == cert  # skewed clock


@pytest.mark.parametrize("case, make, says", [
    ("forged signature", lambda c: c.model_copy(update={"signature": _flip_hex(c.signature)}), "signature"),
    ("another owner key claimed", lambda c: c.model_copy(update={"owner_key": OTHER_OWNER.public_key}), "signature"),
    ("validity stretched", lambda c: c.model_copy(update={"expires_at": c.expires_at + DAY}), "signature"),
    ("issued for another peer", lambda c: certificate(node=OTHER_NODE), "is for peer"),
    ("expired", lambda c: certificate(now=NOW - 2 * DAY, lifetime=DAY), "expired"),
    ("not valid yet", lambda c: certificate(now=NOW + 60), "not valid for another"),
    ("longer than the limit", lambda c: _signed_with_lifetime(MAX_CERTIFICATE_LIFETIME + DAY), "limit"),
    ("ends before it starts", lambda c: _signed_with_lifetime(-DAY), "limit"),
])
def test_a_bad_certificate_is_rejected_saying_why(case, make, says):
    with pytest.raises(RecordRejected, match=says):
        verify_certificate(make(certificate()), NODE.peer_id, now=NOW)


def _signed_with_lifetime(lifetime: float):
    """A certificate whose signature verifies but whose window breaks the rules (only a forger makes one)."""
    issued, expires = NOW - 60, NOW - 60 + lifetime
    signature = OWNER.sign(certificate_payload(OWNER.public_key, NODE.peer_id, issued, expires)).hex()
    return certificate().model_copy(update={"issued_at": issued, "expires_at": expires, "signature": signature})


def test_issuing_refuses_an_unbounded_lifetime():
    with pytest.raises(ValueError, match="at most 365 days"):
        certificate(lifetime=2 * MAX_CERTIFICATE_LIFETIME)


def test_owner_ids_are_stable_short_and_distinct():
    assert is_owner_id(OWNER.owner_id) and len(OWNER.owner_id) == len("owner-") + 26
    assert OWNER.owner_id != OTHER_OWNER.owner_id
    assert OwnerKey.from_bytes(OWNER.to_bytes()).owner_id == OWNER.owner_id
    assert not is_owner_id("owner-" + "1" * 26) and not is_owner_id(NODE.peer_id)
    with pytest.raises(ValueError):
        owner_id(b"short")


def test_the_clock_skew_is_the_records_one():
    assert OWNERS_SKEW == MAX_CLOCK_SKEW  # spelled out in owners.py, which records.py imports


# --- certificates in server records --------------------------------------------------
def test_a_server_record_with_its_owner_certificate_passes_check_record():
    record = server_record(NODE, owner=certificate())
    assert check_record(envelope(NODE, KEY3, record), KEY3, NODE.peer_id, now=NOW) == record
    assert check_record(envelope(NODE, KEY3, server_record(NODE)), KEY3, NODE.peer_id, now=NOW).owner is None


@pytest.mark.parametrize("case, cert, says", [
    ("another peer's certificate copied into my record", lambda: certificate(node=OTHER_NODE), "is for peer"),
    ("a forged signature", lambda: certificate().model_copy(update={"signature": _flip_hex(certificate().signature)}),
     "signature"),
    ("an expired certificate", lambda: certificate(now=NOW - 2 * DAY, lifetime=DAY), "expired"),
])
def test_a_record_with_a_bad_certificate_is_refused(case, cert, says):
    value = envelope(NODE, KEY3, server_record(NODE, owner=cert()))
    with pytest.raises(RecordRejected, match=says):
        check_record(value, KEY3, NODE.peer_id, now=NOW)


def test_a_malformed_certificate_is_refused_as_an_invalid_record():
    good = body_dict(server_record(NODE, owner=certificate()))
    for change in ({"owner_key": "zz" * 32}, {"signature": "00"}, {"node": "not base58!"}, {"admin": True},
                   {"version": 2}):
        body = dict(good, owner=dict(good["owner"], **change))
        with pytest.raises(RecordRejected, match="invalid server record"):
            check_record(forged(NODE, KEY3, body), KEY3, NODE.peer_id, now=NOW)
    with pytest.raises(RecordRejected, match="invalid server record"):
        check_record(forged(NODE, KEY3, dict(good, owner="owner-x")), KEY3, NODE.peer_id, now=NOW)


def test_a_large_record_with_a_certificate_stays_within_the_size_limits():
    """8 relay addresses of 160 characters (longer than any real one seen) and every field at its widest."""
    addresses = tuple(f"/ip4/203.0.113.{i}/tcp/31337/p2p/{OTHER_NODE.peer_id}/p2p-circuit/p2p/{NODE.peer_id}"
                      .ljust(160, "0") for i in range(MAX_ADDRESSES))
    widest = ComputeClass(compute_dtype="bfloat16", weight_quant="int4", kv_dtype="int8", software_version="0" * 48,
                          torch_version="2" * 48, torch_build="abcdef012345", isa="avx512-bf16", row_tile=64,
                          threads=4096)
    record = server_record(NODE, 0, 4096, n_blocks=4096, model_id="m" * 128, throughput=1e9 - 1e-3,
                           free_cache_tokens=2**40, max_session_length=2**40, active_sessions=2**32,
                           compute_class=widest, addresses=addresses, moving_to=(1, 4096), ring=True,
                           owner=certificate())
    body = record.model_dump_json().encode()
    sealed = seal("server", body, key=block_key("m" * 128, 4095), expiration=NOW + 10, public_key=NODE.public_key,
                  sign=NODE.sign)
    assert len(body) <= MAX_BODY_BYTES and len(MSGPackSerializer.dumps(sealed.to_value())) <= MAX_RECORD_BYTES


# --- the owner key file --------------------------------------------------------------
def test_the_owner_key_is_made_once_with_mode_0600(tmp_path, monkeypatch):
    monkeypatch.setenv("SWARMLLM_HOME", str(tmp_path / "home"))
    made = owner_key()
    assert made.path == default_owner_key_path() == tmp_path / "home" / "owner.key"
    assert stat.S_IMODE(made.path.stat().st_mode) == 0o600
    assert owner_key().owner_id == made.owner_id  # kept
    assert owner_key(made.path).owner_id == made.owner_id  # what --owner-key PATH of a copied file gives


def _owner_id_in(home: str) -> str:
    os.environ["SWARMLLM_HOME"] = home
    return owner_key().owner_id


def test_processes_starting_together_make_one_owner_key(tmp_path):
    """`swarmllm up` starts its nodes at once: they must agree on one key, none reading a half-written file."""
    with ProcessPoolExecutor(6, mp_context=multiprocessing.get_context("fork")) as pool:
        ids = list(pool.map(_owner_id_in, [str(tmp_path)] * 12))
    assert len(set(ids)) == 1 and os.listdir(tmp_path) == ["owner.key"]


def test_a_bad_owner_key_file_is_refused_never_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("SWARMLLM_HOME", str(tmp_path))
    path = tmp_path / "owner.key"
    with pytest.raises(OwnerKeyError, match="no owner key at"):
        owner_key(tmp_path / "typo.key")  # a given path is never made: a typo must not make a second owner
    OWNER.save(path)
    path.chmod(0o644)
    with pytest.raises(OwnerKeyError, match="chmod 600"):
        owner_key()
    path.chmod(0o600)
    path.write_bytes(b"\x08\x01\x12\x40" + bytes(64))
    with pytest.raises(OwnerKeyError, match="corrupt"):
        owner_key()
    path.write_bytes(b"not a key")
    with pytest.raises(OwnerKeyError, match="not an Ed25519 owner key"):
        owner_key()
    assert path.read_bytes() == b"not a key"


def test_node_certificates_are_backdated_and_renewed_before_they_expire():
    certificates = NodeCertificates(OWNER, NODE.peer_id, lifetime=40 * DAY)
    first = certificates.current(NOW)
    assert first.issued_at == NOW - CERTIFICATE_BACKDATE and verify_certificate(first, NODE.peer_id, now=NOW)
    assert certificates.current(NOW + 29 * DAY) == first
    renewed = certificates.current(NOW + 31 * DAY)  # under a quarter of its lifetime left
    assert renewed != first and verify_certificate(renewed, NODE.peer_id, now=NOW + 31 * DAY)


# --- the trusted-owners store --------------------------------------------------------
@pytest.fixture
def store(tmp_path):
    with TrustStore(OWNER, tmp_path / "trust.sqlite") as trust:
        yield trust


def test_trusted_owners_are_added_listed_and_revoked(store):
    assert store.trusted_owners() == []
    added = store.add_trusted(OTHER_OWNER.public_key, "Ana", now=NOW, evidence="pairing:abc")
    assert (added.owner_id, added.label, added.revoked) == (OTHER_OWNER.owner_id, "Ana", False)
    assert store.trusted_owners() == [added] and store.trusted_owner_ids() == {OTHER_OWNER.owner_id}
    revoked = store.revoke(OTHER_OWNER.owner_id[:12], now=NOW + 1)  # a unique start of the id will do
    assert revoked.revoked_at == NOW + 1
    assert store.trusted_owners() == [] and store.entries() == [revoked] and store.problems() == []
    assert store.add_trusted(OTHER_OWNER.public_key, "Ana", now=NOW + 2).revoked is False  # pairing again


def test_the_store_survives_reopening_and_refuses_our_own_key(store):
    store.add_trusted(OTHER_OWNER.public_key, "Ana", now=NOW)
    with TrustStore(OWNER, store.path) as again:
        assert again.trusted_owner_ids() == {OTHER_OWNER.owner_id}
    with pytest.raises(ValueError, match="own owner key"):
        store.add_trusted(OWNER.public_key)


def test_revoking_names_exactly_one_owner(store):
    third = OwnerKey.generate()
    store.add_trusted(OTHER_OWNER.public_key, "Ana", now=NOW)
    store.add_trusted(third.public_key, "Ana", now=NOW)
    with pytest.raises(ValueError, match="2 trusted owners match"):
        store.revoke("Ana")
    for nobody in ("owner-nobody", "", "owner-"):  # too short a start names nobody
        with pytest.raises(ValueError, match="no trusted owner match"):
            store.revoke(nobody)
    assert store.revoke(third.owner_id).owner_id == third.owner_id
    assert store.revoke("Ana").owner_id == OTHER_OWNER.owner_id
    assert store.trusted_owner_ids() == set()


@pytest.mark.parametrize("tamper", [
    "UPDATE trusted_owners SET revoked = 0",                                   # un-revoke by the column
    "UPDATE trusted_owners SET entry = replace(entry, '\"revoked_at\":1000001.0', '\"revoked_at\":null')",
    "UPDATE trusted_owners SET signature = substr(signature, 2) || '0'",
    "UPDATE trusted_owners SET owner_key = '{third}'",                         # move the trust to another key
])
def test_a_tampered_entry_is_detected_and_ignored(store, tamper):
    store.add_trusted(OTHER_OWNER.public_key, "Ana", now=NOW)
    store.revoke(OTHER_OWNER.owner_id, now=NOW + 1)
    raw = sqlite3.connect(store.path)
    with raw:
        raw.execute(tamper.format(third=OwnerKey.generate().public_key))
    raw.close()
    assert store.trusted_owners() == [] and store.entries() == []
    assert len(store.problems()) == 1 and "ignored" in store.problems()[0]


def test_an_entry_copied_from_another_owners_store_does_not_verify(tmp_path, store):
    with TrustStore(OTHER_OWNER, tmp_path / "theirs.sqlite") as theirs:
        theirs.add_trusted(OwnerKey.generate().public_key, "Mallory", now=NOW)
    raw = sqlite3.connect(store.path)
    with raw:
        raw.execute("ATTACH DATABASE ? AS theirs", (str(tmp_path / "theirs.sqlite"),))
        raw.execute("INSERT INTO trusted_owners SELECT * FROM theirs.trusted_owners")
    raw.close()
    assert store.trusted_owners() == [] and "not signed by this machine's owner key" in store.problems()[0]


def test_a_store_file_is_private(store):
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
