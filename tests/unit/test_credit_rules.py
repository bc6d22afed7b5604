"""Credits (issue 14): the pay rule, signed statements and links, the ledger, the node's inbox,
the free tier's limits and priority admission. Pure parts and SQLite only; no swarm."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from swarmllm.client.credit_ledger import CreditLedger
from swarmllm.client.credits import ReceiptRow, session_credits
from swarmllm.client.receipts import SCHEMA as RECEIPTS_SCHEMA
from swarmllm.gateway.credit_links import read_links
from swarmllm.gateway.free_tier import admission_priority, boost, contributor_limits
from swarmllm.gateway.limits import Admission, Limits
from swarmllm.protocol.credits import (
    LAYOUT_CREDITS, CreditLink, CreditStatement, api_key_digest, credit_frame, envelope_from_json, envelope_to_json,
    sign_credit_link, sign_credit_statement, verify_credit_link, verify_credit_statement,
)
from swarmllm.protocol.envelope import RecordRejected
from swarmllm.server.credits_inbox import CreditInbox, read_statements
from swarmllm.swarm import Identity

GATEWAY, NODE, OTHER = Identity.generate(), Identity.generate(), Identity.generate()


def statement(sequence=1, node=NODE.peer_id, gateway=GATEWAY.peer_id, credits=100):
    return CreditStatement(gateway=gateway, node=node, period_start=0, period_end=10, credits=credits, receipts=3,
                           sequence=sequence)


def signed(s: CreditStatement, by: Identity = GATEWAY):
    return sign_credit_statement(s, public_key=by.public_key, sign=by.sign, now=10.0)


def test_the_rule_pays_confirmed_positions_times_blocks_and_forfeits_a_refuted_session():
    rows = [ReceiptRow("a", 5, 10, 1), ReceiptRow("a", 1, 10, 1), ReceiptRow("a", 1, 10, 0),
            ReceiptRow("b", 5, 20, 1), ReceiptRow("b", 1, 20, -1), ReceiptRow("c", 1, 30, 0)]
    out = session_credits(rows)
    assert (out["a"].credits, out["a"].receipts, out["a"].forfeited) == (60, 2, False)
    assert (out["b"].credits, out["b"].receipts, out["b"].forfeited) == (0, 0, True)
    assert (out["c"].credits, out["c"].receipts) == (0, 0)  # unchecked work is not paid


def test_a_statement_verifies_only_for_its_node_its_signer_and_a_newer_sequence():
    value = envelope_from_json(envelope_to_json(signed(statement(2))))
    assert verify_credit_statement(value, NODE.peer_id, last_sequence=1).credits == 100
    with pytest.raises(RecordRejected, match="not for this node"):
        verify_credit_statement(value, OTHER.peer_id)
    with pytest.raises(RecordRejected, match="replay"):
        verify_credit_statement(value, NODE.peer_id, last_sequence=2)
    forged = signed(statement(2), by=OTHER)  # claims GATEWAY, signed by another key
    with pytest.raises(RecordRejected, match="signed by"):
        verify_credit_statement(forged.to_value(), NODE.peer_id)
    inflated = dict(value, body=value["body"].replace(b'"credits":100', b'"credits":999'))
    with pytest.raises(RecordRejected, match="signature"):
        verify_credit_statement(inflated, NODE.peer_id)


def test_a_link_counts_only_when_the_node_signed_it(tmp_path):
    digest = api_key_digest("sk-0123456789abcdef")
    good = sign_credit_link(CreditLink(node=NODE.peer_id, key_digest=digest, linked_at=1.0),
                            public_key=NODE.public_key, sign=NODE.sign)
    stolen = sign_credit_link(CreditLink(node=NODE.peer_id, key_digest=api_key_digest("sk-thief-0123456789"),
                                         linked_at=2.0), public_key=OTHER.public_key, sign=OTHER.sign)
    assert verify_credit_link(good.to_value()).node == NODE.peer_id
    with pytest.raises(RecordRejected, match="only a node links itself"):
        verify_credit_link(stolen.to_value())
    path = tmp_path / "links.jsonl"
    path.write_text(envelope_to_json(good) + "\n" + envelope_to_json(stolen) + "\nnot json\n")
    assert read_links(path) == {digest: [NODE.peer_id]}


def test_the_inbox_keeps_good_statements_and_refuses_hostile_ones(tmp_path):
    inbox = CreditInbox(tmp_path / "in.sqlite")
    assert inbox.accept(credit_frame(signed(statement(1))), NODE.peer_id, now=5.0).credits == 100
    for frame, why in [(credit_frame(signed(statement(1))), "replay"),
                       (credit_frame(signed(statement(2, node=OTHER.peer_id))), "not for this node"),
                       (credit_frame(signed(statement(3), by=OTHER)), "signed by"),
                       (LAYOUT_CREDITS + b"{garbage", "JSON"), (b"X" * 10, "not a credit")]:
        with pytest.raises(RecordRejected, match=why):
            inbox.accept(frame, NODE.peer_id, now=6.0)
    inbox.close()
    assert [r.statement.sequence for r in read_statements(tmp_path / "in.sqlite")] == [1]


def _receipts_db(path, rows):
    connection = sqlite3.connect(path)
    connection.executescript(RECEIPTS_SCHEMA)
    for session, peer, positions, start, end, verified, at in rows:
        connection.execute("INSERT OR IGNORE INTO sessions VALUES (?, 'm', ?)", (session, at))
        connection.execute("INSERT INTO receipts (session_id, step_id, peer_id, span_start, span_end, start_position, "
                           "positions, input_hash, output_hash, compute_class, server_time, received_at, frame, "
                           "verified) VALUES (?, 0, ?, ?, ?, 0, ?, x'', x'', 'c', ?, ?, x'', ?)",
                           (session, peer, start, end, positions, at, at, verified))
    connection.commit()
    connection.close()


def test_the_ledger_settles_quiet_sessions_once_and_issues_sequenced_statements(tmp_path):
    receipts = tmp_path / "receipts.sqlite"
    _receipts_db(receipts, [("s1", "a", 6, 0, 10, 1, 100.0), ("s1", "b", 6, 10, 30, 1, 100.0),
                            ("s2", "a", 1, 0, 10, 1, 100.0), ("s2", "a", 1, 0, 10, -1, 100.0),
                            ("s3", "a", 4, 0, 10, 1, 195.0)])  # s3 is not quiet yet at 200
    ledger = CreditLedger(tmp_path / "credits.sqlite", quiet=10.0)
    assert ledger.settle(receipts, now=200.0) == 2 and ledger.settle(receipts, now=200.0) == 0
    sign = lambda s: signed(s)  # noqa: E731
    first = {s.node: s for s in ledger.issue(GATEWAY.peer_id, 200.0, sign)}
    assert (first["a"].credits, first["a"].receipts, first["a"].forfeited_sessions) == (60, 1, 1)
    assert first["b"].credits == 120 and first["a"].sequence == 1
    assert ledger.settle(receipts, now=300.0) == 1
    (second,) = ledger.issue(GATEWAY.peer_id, 300.0, sign)
    assert (second.node, second.credits, second.sequence, second.period_start) == ("a", 40, 2, 200.0)
    assert ledger.credits_since(["a", "b"], since=0) == 220
    assert len(ledger.undelivered()) == 3
    ledger.mark_delivered("a", 1)
    assert [(n, q) for n, q, _ in ledger.undelivered()] == [("a", 2), ("b", 1)]
    ledger.record_spending("d", 50, 300.0)
    assert ledger.spending("d") == 50


def test_contributors_get_more_limits_capped_at_four_times():
    base = Limits(60, 40_000, 4)
    assert boost(0) == 1.0 and boost(20_000) == 2.0 and boost(10**9) == 4.0
    assert contributor_limits(base, 20_000) == Limits(120, 80_000, 8)
    assert admission_priority(0) == 0.0 < admission_priority(5)


def test_admission_serves_the_biggest_contributor_first_and_anonymous_in_order():
    async def run():
        admission = Admission(max_active=1, max_queue=4)
        await admission.acquire()
        order = []

        async def wait(name, priority):
            await admission.acquire(priority)
            order.append(name)

        tasks = [asyncio.ensure_future(wait(n, p)) for n, p in [("anon1", 0), ("small", 10), ("anon2", 0),
                                                                ("big", 1000)]]
        await asyncio.sleep(0)
        assert admission.waiting == 4
        for _ in range(4):
            admission.release()
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(run()) == ["big", "small", "anon1", "anon2"]


def test_a_cancelled_waiter_gives_its_place_away():
    async def run():
        admission = Admission(max_active=1, max_queue=2)
        await admission.acquire()
        gone = asyncio.ensure_future(admission.acquire(5))
        stays = asyncio.ensure_future(admission.acquire(0))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
        admission.release()
        await asyncio.wait_for(stays, 1)
        return admission.active, admission.waiting

    assert asyncio.run(run()) == (1, 0)
