"""Step receipts: the signed wire form, the client's checks (receipt_check.py), the client's store and
the server's work log. No network: receipts are signed with real identities and fed to the book as
a session's reader would."""

from __future__ import annotations

import sqlite3

import pytest

from swarmllm.client.receipt_check import ReceiptBook, ReceiptError, Signer
from swarmllm.client.receipts import ReceiptStore, list_sessions, session_receipts
from swarmllm.client.session import RingChannel
from swarmllm.protocol import ErrorCode, ProtocolError, TokenResult, decode_frame, encode_frame
from swarmllm.protocol.envelope import seal
from swarmllm.protocol.receipts import (
    DOMAIN, LAYOUT_RECEIPT, ReceiptRejected, digest, payload_of, public_key_from_peer_id, sign_receipt,
    verify_receipt,
)
from swarmllm.server.receipts import ReceiptIssuer
from swarmllm.server.work_log import WorkLog, read_work_log
from swarmllm.swarm.identity import Identity

A, B, C = Identity.generate(), Identity.generate(), Identity.generate()
MODEL = "smollm2-135m"
CLASS = "float32.none.auto.avx2-amd.r1.t2.0123456789ab"
X0, X1, X2, X3 = (digest(bytes([i]) * 2304) for i in range(4))  # what flows: client -> A -> B -> C -> client


def fields(identity: Identity, span=(0, 10), session_id="s-a", step_id=7, input_hash=X0, output_hash=X1, **changes):
    out = dict(session_id=session_id, step_id=step_id, start_position=40, positions=1, start=span[0], end=span[1],
               model_id=MODEL, input_hash=input_hash, output_hash=output_hash, compute_class=CLASS,
               peer_id=identity.peer_id, time=1.7e9)
    out.update(changes)
    return out


def signed(identity: Identity, **kw):
    return sign_receipt(fields(identity, **kw), identity.sign)[0]


# --- the wire form -----------------------------------------------------------------------
def test_a_receipt_round_trips_through_a_frame_and_verifies_against_its_peer():
    receipt, frame = sign_receipt(fields(A), A.sign)
    assert frame[:1] == LAYOUT_RECEIPT and len(frame) < 320  # ~0.12x a float32 one-token frame
    decoded, payload = decode_frame(frame)
    assert decoded == receipt and len(payload) == 0 and encode_frame(decoded) == frame
    verify_receipt(decoded, A.peer_id)
    assert public_key_from_peer_id(A.peer_id) == A.public_key


@pytest.mark.parametrize("change", [{"output_hash": X2}, {"step_id": 8}, {"positions": 2}, {"start": 1},
                                    {"compute_class": "bfloat16"}, {"time": 1.8e9}, {"session_id": "s-b"}])
def test_any_changed_field_breaks_the_signature(change):
    receipt = signed(A)
    with pytest.raises(ReceiptRejected, match="does not verify"):
        verify_receipt(receipt.model_copy(update=change))


def test_a_receipt_signed_by_another_key_or_claimed_for_another_peer_is_rejected():
    forged = sign_receipt(fields(A), B.sign)[0]  # says it is A's, signed with B's key
    with pytest.raises(ReceiptRejected, match="does not verify"):
        verify_receipt(forged)
    with pytest.raises(ReceiptRejected, match="came from peer"):
        verify_receipt(signed(A), B.peer_id)
    with pytest.raises(ReceiptRejected, match="Ed25519"):
        verify_receipt(signed(A).model_copy(update={"peer_id": "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"}))


def test_a_record_signature_never_passes_for_a_receipt():
    receipt = signed(A)
    payload = payload_of(receipt)
    record_signature = seal("server", payload, key="k", expiration=1.0, public_key=A.public_key,
                            sign=A.sign).signature
    with pytest.raises(ReceiptRejected):
        verify_receipt(receipt.model_copy(update={"signature": record_signature}))
    verify_receipt(receipt.model_copy(update={"signature": A.sign(DOMAIN + payload)}))


def test_truncated_padded_or_non_canonical_frames_are_malformed():
    _, frame = sign_receipt(fields(A), A.sign)
    for bad in (frame[:40], frame[:-64] + b"\x00" + frame[-64:], LAYOUT_RECEIPT + b"\x02" + frame[2:]):
        with pytest.raises(ProtocolError) as info:
            decode_frame(bad)
        assert info.value.code == ErrorCode.MALFORMED
    # step_id 7 written in two bytes (0x87 0x00) instead of one: same value, not the signed bytes
    session_end = 2 + 1 + len("s-a")
    non_canonical = frame[:session_end] + b"\x87\x00" + frame[session_end + 1:]
    with pytest.raises(ProtocolError, match="canonical"):
        decode_frame(non_canonical)


def test_the_issuer_hashes_what_it_sent_and_logs_the_work(tmp_path):
    log = WorkLog(tmp_path / "work.sqlite")
    issuer = ReceiptIssuer(A.sign, A.peer_id, log, clock=lambda: 1.7e9)
    output = bytes(range(256)) * 9
    frame = issuer.issue(session_id="s-a", requester=B.peer_id, step_id=3, start_position=5, positions=2,
                         span=(0, 10), model_id=MODEL, input_hash=X0, input_bytes=4608, output=output,
                         compute_class=CLASS)
    receipt, _ = decode_frame(frame)
    verify_receipt(receipt, A.peer_id)
    assert receipt.output_hash == digest(output) and receipt.input_hash == X0
    log.close()
    (row,) = read_work_log(tmp_path / "work.sqlite")
    assert (row.requester, row.session_id, row.step_id, row.positions, row.output_bytes) == \
        (B.peer_id, "s-a", 3, 2, len(output))
    assert row.output_hash == receipt.output_hash


# --- the client's checks -----------------------------------------------------------------
SIGNERS = (Signer(A.peer_id, "s-a", 0, 10, CLASS), Signer(B.peer_id, "s-b", 10, 20, CLASS),
           Signer(C.peer_id, "s-c", 20, 30, CLASS))


def chain_receipts(overrides=None):
    """Honest receipts of step 7 by A, B, C; overrides: {peer index: field changes}."""
    overrides = overrides or {}
    parts = [dict(span=(0, 10), session_id="s-a", input_hash=X0, output_hash=X1),
             dict(span=(10, 20), session_id="s-b", input_hash=X1, output_hash=X2),
             dict(span=(20, 30), session_id="s-c", input_hash=X2, output_hash=X3)]
    out = []
    for i, (identity, part) in enumerate(zip((A, B, C), parts)):
        part.update(overrides.get(i, {}))
        out.append(signed(identity, **part))
    return out


def book_with_step(input_hash=X0):
    delivered, verified = [], []
    book = ReceiptBook(MODEL, verified.append)
    book.expect(7, 40, 1, SIGNERS, input_hash, delivered.append)
    return book, delivered, verified


def test_a_step_is_delivered_once_its_result_and_every_receipt_check_out():
    book, delivered, verified = book_with_step()
    a, b, c = chain_receipts()
    book.add_receipt(C.peer_id, c)
    book.add_result(7, C.peer_id, "output", X3)
    book.add_receipt(A.peer_id, a)
    assert delivered == [] and book.missing(7) == (True, [B.peer_id])
    book.add_receipt(B.peer_id, b)
    assert delivered == ["output"] and verified == [[a, b, c]] and not book.expects(7)


@pytest.mark.parametrize("overrides, suspects, words", [
    ({2: {"output_hash": X0}}, (C.peer_id,), "output other than"),            # the last lies about what it sent
    ({0: {"input_hash": X3}}, (A.peer_id,), "input other than"),              # the first about what it got
    ({1: {"input_hash": X3}}, (A.peer_id, B.peer_id), "disagree"),            # neighbours disagree: both suspect
    ({1: {"start": 11}}, (B.peer_id,), "start 11"),                           # another span than it serves us
    ({1: {"compute_class": "bfloat16.none"}}, (B.peer_id,), "compute_class"),  # another class than announced
    ({2: {"session_id": "s-a"}}, (C.peer_id,), "session_id"),
])
def test_a_receipt_that_breaks_a_rule_names_its_suspects(overrides, suspects, words):
    book, delivered, _ = book_with_step()
    receipts = chain_receipts(overrides)
    book.add_result(7, C.peer_id, "output", X3)
    with pytest.raises(ReceiptError, match=words) as info:
        for identity, receipt in zip((A, B, C), receipts):
            book.add_receipt(identity.peer_id, receipt)
    assert info.value.peer_ids == suspects and info.value.step_id == 7 and delivered == []


def test_forged_signatures_wrong_streams_and_equivocation_are_the_senders_fault():
    a, b, c = chain_receipts()
    book, _, _ = book_with_step()
    with pytest.raises(ReceiptError, match="does not verify") as info:
        book.add_receipt(B.peer_id, b.model_copy(update={"signature": bytes(64)}))
    assert info.value.peer_ids == (B.peer_id,)
    with pytest.raises(ReceiptError) as info:
        book.add_receipt(B.peer_id, a)  # A's receipt sent on B's stream
    assert info.value.peer_ids == (B.peer_id,)
    book.add_receipt(A.peer_id, a)
    book.add_receipt(A.peer_id, a)  # the same receipt twice: harmless
    with pytest.raises(ReceiptError, match="two different"):
        book.add_receipt(A.peer_id, signed(A, output_hash=X2))
    with pytest.raises(ReceiptError, match="only the chain's last server") as info:
        book.add_result(7, B.peer_id, "forged output", X3)
    assert info.value.peer_ids == (B.peer_id,)


def test_receipts_of_unknown_steps_and_from_non_signers_are_ignored_unread():
    book, delivered, _ = book_with_step()
    junk = signed(A, step_id=99).model_copy(update={"signature": bytes(64)})
    book.add_receipt(A.peer_id, junk)  # no step 99: not even the signature is looked at
    outsider = Identity.generate()
    book.add_receipt(outsider.peer_id, signed(outsider))
    assert book.missing(7) == (False, [A.peer_id, B.peer_id, C.peer_id]) and delivered == []


def test_a_ring_token_has_no_output_bytes_and_an_unknown_input_is_not_checked():
    book, delivered, _ = book_with_step(input_hash=None)
    receipts = chain_receipts({0: {"input_hash": X3}, 2: {"output_hash": X0}})
    for identity, receipt in zip((A, B, C), receipts):
        book.add_receipt(identity.peer_id, receipt)
    book.add_result(7, C.peer_id, "token", None)
    assert delivered == ["token"]


def test_the_book_tracks_a_bounded_number_of_steps():
    book = ReceiptBook(MODEL, max_open=2)
    assert book.expect(1, 0, 1, SIGNERS, None, print) and book.expect(2, 1, 1, SIGNERS, None, print)
    assert not book.expect(3, 2, 1, SIGNERS, None, print)
    book.forget_where(lambda step: step < 2)
    assert book.expect(3, 2, 1, SIGNERS, None, print)


# --- the store ---------------------------------------------------------------------------
def test_the_store_keeps_receipts_per_session_and_they_verify_again(tmp_path):
    path = tmp_path / "receipts.sqlite"
    store = ReceiptStore(path)
    store.add("session-1", MODEL, chain_receipts())
    store.add("session-1", MODEL, [signed(A, step_id=8)])
    store.add("session-2", MODEL, [signed(B, step_id=1, span=(10, 20), session_id="s-b")])
    assert store.flush()
    (second, first) = list_sessions(path)
    assert (first.session_id, first.steps, first.receipts, first.peers, first.verified) == ("session-1", 2, 4, 3, 0)
    rows = session_receipts("session-1", path)
    assert [(r.step_id, r.peer_id) for r in rows] == [(7, A.peer_id), (7, B.peer_id), (7, C.peer_id), (8, A.peer_id)]
    for row in rows:
        verify_receipt(row.receipt(), row.peer_id)
    assert rows[0].input_hash == X0.hex() and rows[0].verified == 0
    store.close()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    with sqlite3.connect(path) as db:  # the column the verification modes set
        db.execute("UPDATE receipts SET verified = 1 WHERE step_id = 8")
    assert list_sessions(path)[1].verified == 1


def test_the_work_log_is_pruned_by_age_and_by_rows(tmp_path):
    now = [1000.0]
    log = WorkLog(tmp_path / "work.sqlite", max_rows=2, max_age=100.0, clock=lambda: now[0], interval=0.01)
    issuer = ReceiptIssuer(A.sign, A.peer_id, log, clock=lambda: now[0])
    for step in range(5):
        now[0] = 1000.0 + step * 40
        issuer.issue(session_id="s", requester=B.peer_id, step_id=step, start_position=step, positions=1,
                     span=(0, 10), model_id=MODEL, input_hash=X0, input_bytes=2304, output=b"x" * 2304,
                     compute_class=CLASS)
    log.prune_now()
    assert [row.step_id for row in read_work_log(tmp_path / "work.sqlite")] == [3, 4]  # steps 0, 1 too old; 2 the third newest
    log.close()



def test_a_ring_hands_out_verified_tokens_in_step_order_and_tracks_only_steps_just_ahead():
    ring = RingChannel(base=10, end=1000, start_position=5, first_positions=4)
    assert ring.positions_of(10) == (5, 4) and ring.positions_of(12) == (10, 1)
    token = lambda step: TokenResult(session_id="s", step_id=step, position=step, token_id=1, draws=0)  # noqa: E731
    ring.put_token(token(11))  # its receipts checked out before step 10's did
    assert ring.queue.empty()
    ring.put_token(token(10))
    assert [ring.queue.get_nowait().step_id for _ in range(2)] == [10, 11]
    assert not ring.may_track(11) and ring.may_track(12) and ring.may_track(75) and not ring.may_track(76)
    assert not ring.may_track(5) and not ring.may_track(1000)


def test_verification_marks_receipts_confirmed_or_refuted_by_position(tmp_path):
    path = tmp_path / "receipts.sqlite"
    store = ReceiptStore(path)
    store.add("s", MODEL, [signed(A, step_id=1, start_position=0, positions=40), signed(A, step_id=2),
                           signed(A, step_id=3, start_position=41), signed(B, step_id=2, span=(10, 20), session_id="s-b")])
    store.mark("s", A.peer_id, 0, 41, 1)       # positions 0..40 of A confirmed: steps 1 and 2
    store.mark("s", A.peer_id, 41, 42, -1)     # position 41 found wrong: step 3
    store.mark("s", A.peer_id, 0, 42, 1)       # a verdict never overwrites an earlier one
    assert store.flush()
    verdicts = {(r.peer_id, r.step_id): r.verified for r in session_receipts("s", path)}
    assert verdicts == {(A.peer_id, 1): 1, (A.peer_id, 2): 1, (A.peer_id, 3): -1, (B.peer_id, 2): 0}
    store.close()
