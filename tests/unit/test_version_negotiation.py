"""Protocol versions (pure): negotiation, the messages' and records' version fields, routing by range."""

from __future__ import annotations

import json
import struct

import pytest

import swarmllm
from signed_records import NOW, body_dict, forged, server_record
from swarmllm.client.routing import IncompatibleVersionsError, MissingBlocksError, plan_chain, usable
from swarmllm.protocol import (
    MIN_PROTOCOL_VERSION, OUR_RANGE, PROTOCOL_VERSION, ComputeClass, ErrorCode, OpenSession, ProtocolError,
    RecordRejected, ServerRecord, block_key, check_record, decode_frame, encode_frame, negotiate,
)
from swarmllm.protocol.codec import LAYOUT_JSON
from swarmllm.protocol.versions import incompatibility, overlaps, range_text
from swarmllm.swarm.identity import Identity

A = Identity.generate()
KEY3 = block_key("m", 3)


def test_this_version_speaks_v8_the_first_that_negotiates_to_v9_the_ring_penalties():
    assert (MIN_PROTOCOL_VERSION, PROTOCOL_VERSION) == OUR_RANGE == (8, 9)


def test_overlapping_ranges_speak_the_highest_common_version():
    assert negotiate((8, 8), (8, 9)) == 8
    assert negotiate((8, 10), (9, 12)) == 10
    assert negotiate((9, 9), (8, 9)) == 9
    assert overlaps((8, 9), (9, 10)) and not overlaps((8, 8), (10, 10))


def test_disjoint_ranges_refuse_and_say_which_side_must_upgrade():
    with pytest.raises(ProtocolError) as newer_client:
        negotiate((8, 8), (10, 10))
    assert newer_client.value.code == ErrorCode.VERSION_MISMATCH
    assert str(newer_client.value) == ("this node speaks protocol v8 and the client v10: upgrade this node "
                                       "(pip install -U swarmllm)")
    with pytest.raises(ProtocolError) as older_client:
        negotiate((10, 11), (8, 9))
    assert str(older_client.value) == ("this node speaks protocol v10 to v11 and the client v8 to v9: the client "
                                       "must upgrade (pip install -U swarmllm)")
    assert incompatibility((8, 8), (7, 7), us="this client", them="the server").endswith("the server must upgrade "
                                                                                          "(pip install -U swarmllm)")
    with pytest.raises(ValueError, match="empty"):
        negotiate((8, 8), (9, 8))
    assert range_text((8, 8)) == "v8" and range_text((8, 9)) == "v8 to v9"


def _open(**fields):
    return OpenSession(session_id="s" * 16, model_id="m", start=0, end=3, max_length=8, **fields)


def _json_frame(header: dict) -> bytes:
    raw = json.dumps(header).encode()
    return LAYOUT_JSON + struct.pack("<I", len(raw)) + raw


def test_open_session_sends_our_range_by_default_and_refuses_an_empty_one():
    msg = _open()
    assert (msg.min_protocol_version, msg.protocol_version) == OUR_RANGE
    again, _ = decode_frame(encode_frame(msg))
    assert again == msg
    header = json.loads(msg.model_dump_json())
    with pytest.raises(ProtocolError) as empty:
        decode_frame(_json_frame({**header, "min_protocol_version": 9, "protocol_version": 8}))
    assert empty.value.code == ErrorCode.MALFORMED and "empty" in str(empty.value)


def test_an_open_session_from_before_v8_speaks_its_own_version_only():
    header = json.loads(_open().model_dump_json())
    del header["min_protocol_version"]
    msg, _ = decode_frame(_json_frame({**header, "protocol_version": 7}))
    assert (msg.min_protocol_version, msg.protocol_version) == (7, 7)
    with pytest.raises(ProtocolError, match="the client must upgrade"):
        negotiate(OUR_RANGE, (msg.min_protocol_version, msg.protocol_version))


def test_an_unreadable_open_session_of_a_newer_incompatible_peer_is_a_version_mismatch():
    header = {**json.loads(_open().model_dump_json()), "a_field_of_v10": 1}
    with pytest.raises(ProtocolError) as newer:
        decode_frame(_json_frame({**header, "protocol_version": 10, "min_protocol_version": 10}))
    assert newer.value.code == ErrorCode.VERSION_MISMATCH and "upgrade this node" in str(newer.value)
    nested = b"[" * 60_000  # under MAX_HEADER_BYTES, so it reaches the parsers
    with pytest.raises(ProtocolError) as deep:  # too deep for json too: still only malformed
        decode_frame(LAYOUT_JSON + struct.pack("<I", len(nested)) + nested)
    assert deep.value.code == ErrorCode.MALFORMED
    # Within our range an unknown field is a real defect: the peer should not have sent it.
    with pytest.raises(ProtocolError) as same:
        decode_frame(_json_frame({**header, "protocol_version": 9, "min_protocol_version": 8}))
    assert same.value.code == ErrorCode.MALFORMED


def _check(body: dict):
    return check_record(forged(A, KEY3, body), KEY3, A.peer_id, now=NOW)


def test_a_record_of_a_newer_version_is_read_without_its_new_fields():
    record = server_record(A)
    future = PROTOCOL_VERSION + 1
    newer = body_dict(record, protocol_version=future, a_field_of_the_future=[1, 2], another={"x": 1})
    parsed = _check(newer)
    assert isinstance(parsed, ServerRecord) and parsed.protocol_range == (MIN_PROTOCOL_VERSION, future)
    assert parsed == record.model_copy(update={"protocol_version": future})
    # Strict otherwise: unknown fields at our version, nested unknown fields, bad values of known ones.
    for body in (body_dict(record, a_field_of_the_future=1),
                 body_dict(record, protocol_version=future, compute_class={"a_field_of_the_future": 1}),
                 body_dict(record, protocol_version=future, a_field_of_the_future=1, throughput=-1.0),
                 body_dict(record, protocol_version=future, min_protocol_version=future + 1)):
        with pytest.raises(RecordRejected):
            _check(body)


def test_a_record_from_before_v8_has_a_range_of_its_own_version():
    old = body_dict(server_record(A), protocol_version=7)
    del old["min_protocol_version"]
    parsed = _check(old)
    assert parsed.protocol_range == (7, 7) and not usable(parsed)


def _rec(peer, start, end, versions=OUR_RANGE, software="0.1.0"):
    return server_record(A, start, end, peer_id=peer, max_session_length=4096, min_protocol_version=versions[0],
                         protocol_version=versions[1], compute_class=ComputeClass(software_version=software))


def test_routing_uses_servers_whose_range_overlaps_ours():
    chain = plan_chain("m", 30, [_rec("a", 0, 15), _rec("b", 15, 30, (8, 9), "0.2.0")])
    assert [link.peer_id for link in chain] == ["a", "b"]
    chain = plan_chain("m", 30, [_rec("a", 0, 15), _rec("b", 15, 30, (10, 10)), _rec("c", 15, 30)])
    assert [link.peer_id for link in chain] == ["a", "c"]


def test_blocks_held_only_by_other_versions_name_the_versions_and_who_upgrades():
    with pytest.raises(IncompatibleVersionsError) as newer:
        plan_chain("smollm2-135m", 30, [_rec("a", 0, 15), _rec("b", 15, 30, (10, 10), "0.3.0")])
    assert isinstance(newer.value, MissingBlocksError) and newer.value.missing == [(15, 30)]
    assert str(newer.value) == (f"no route to blocks [15, 30) of smollm2-135m: its servers speak protocol v10 "
                                f"(swarmllm 0.3.0) and this client {range_text(OUR_RANGE)} (swarmllm {swarmllm.__version__}): upgrade "
                                f"swarmllm (pip install -U swarmllm)")
    with pytest.raises(IncompatibleVersionsError, match=r"protocol v7 \(swarmllm 0.0.9\) .*those servers must "
                                                        r"upgrade swarmllm"):
        plan_chain("m", 30, [_rec("a", 0, 15), _rec("b", 15, 30, (7, 7), "0.0.9")])
    # A gap nobody covers at all is still the plain missing-blocks error.
    with pytest.raises(MissingBlocksError) as gap:
        plan_chain("m", 30, [_rec("a", 0, 10), _rec("b", 15, 30, (10, 10))])
    assert not isinstance(gap.value, IncompatibleVersionsError) and "protocol v10" in str(gap.value)
