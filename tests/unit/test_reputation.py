"""Reputation (client/reputation.py, reputation_store.py), signed statements about third parties
(protocol/statements.py) and the routing hooks they feed (penalties, exclusions, per-session ties)."""

from __future__ import annotations

import pytest

from swarmllm.client import reputation as rep
from swarmllm.client.reputation import MemoryStore, Reputation, ReputationPolicy, load_trusted_gateways
from swarmllm.client.reputation_store import SqliteReputationStore
from swarmllm.client.routing import TIE_TOLERANCE, plan_chain
from swarmllm.protocol import RecordRejected, ServerRecord
from swarmllm.protocol.statements import ReputationStatement, sign_statement, verify_statement
from swarmllm.swarm.identity import Identity

NOW = 1.7e9
DAY = 86400.0
POLICY = ReputationPolicy()


def test_a_new_peer_is_sampled_always_routed_plainly_and_not_banned():
    book = Reputation(clock=lambda: NOW)
    assert book.score("new") == 0.5 and book.sample_probability("new") == 1.0
    assert book.penalties(["new"]) == {} and not book.is_banned("new")


def test_a_clean_record_lowers_sampling_to_the_floor_and_a_mismatch_raises_it():
    book = Reputation(clock=lambda: NOW)
    book.record_verified("p", 20)
    assert book.sample_probability("p") == pytest.approx(0.5)
    book.record_verified("p", 160)
    assert book.sample_probability("p") == pytest.approx(0.1)
    book.record_verified("p", 100_000)
    assert book.sample_probability("p") == POLICY.sample_floor and book.score("p") > 0.99
    clean_score = book.score("p")
    book.record_mismatch("p")
    assert book.sample_probability("p") == pytest.approx(0.5) and book.score("p") < clean_score
    assert book.sample_probability("p", now=NOW + POLICY.half_life) == pytest.approx(0.25)
    book.record_mismatch("p")
    assert book.sample_probability("p") == 1.0
    assert book.record("p").steps_verified == 100_180 and book.record("p").mismatches == 2


def test_mismatches_and_timeouts_cost_score_and_routing_penalty_and_decay_with_the_half_life():
    book = Reputation(clock=lambda: NOW)
    book.record_verified("liar", 5)
    book.record_mismatch("liar")
    book.record_timeout("slow")
    assert book.score("liar") < 0.25 < book.score("slow") < 0.5
    penalties = book.penalties(["liar", "slow", "new"])
    assert set(penalties) == {"liar", "slow"} and penalties["liar"] > penalties["slow"] > 0
    later = NOW + 10 * POLICY.half_life
    assert book.score("liar", now=later) > 0.45  # what is ~1000x decayed is nearly forgotten
    record = rep.decayed(book.record("liar"), NOW + POLICY.half_life)
    assert record.bad_mismatches == pytest.approx(0.5) and record.mismatches == 1  # lifetime counts stay


def test_bans_escalate_from_ten_minutes_by_four_and_hold_until_they_end():
    book = Reputation(clock=lambda: NOW)
    assert [rep.ban_seconds(n) for n in range(4)] == [600, 2400, 9600, 38400]
    assert rep.ban_seconds(40) == POLICY.ban_max
    first = book.ban("liar")
    assert first.banned_until == NOW + 600 and book.is_banned("liar") and book.banned_peers() == {"liar"}
    assert not book.is_banned("liar", now=NOW + 601)
    second = book.ban("liar", now=NOW + 700)
    assert second.bans == 2 and second.banned_until == NOW + 700 + 2400
    again = book.ban("liar", now=NOW + 800)  # while banned: extended, never shortened
    assert again.banned_until == NOW + 800 + 9600


def test_a_restart_does_not_forgive_a_liar(tmp_path):
    path = tmp_path / "reputation.sqlite"
    book = Reputation(SqliteReputationStore(path), clock=lambda: NOW)
    book.record_verified("honest", 50)
    book.record_mismatch("liar")
    book.ban("liar")
    book.store.close()
    reopened = Reputation(SqliteReputationStore(path), clock=lambda: NOW + 60)
    assert reopened.is_banned("liar") and reopened.record("liar").mismatches == 1
    assert reopened.record("honest") == book.record("honest")
    assert reopened.sample_probability("honest") == book.sample_probability("honest", now=NOW + 60)


# --- statements about third parties ------------------------------------------------------
GATEWAY, STRANGER = Identity.generate(), Identity.generate()


def statement_value(signer=GATEWAY, issuer=None, subject="liar", expiration=NOW + DAY, **fields):
    statement = ReputationStatement(subject=subject, issuer=issuer or signer.peer_id, issued_at=NOW, **fields)
    return sign_statement(statement, public_key=signer.public_key, sign=signer.sign, expiration=expiration).to_value()


def test_a_trusted_gateways_statement_is_applied_and_only_makes_things_stricter():
    book = Reputation(trusted={GATEWAY.peer_id}, clock=lambda: NOW)
    book.record_verified("liar", 10)
    statement = book.apply_statement(statement_value(mismatches=3, banned_until=NOW + 3600, reason="wrong tokens"))
    assert statement.reason == "wrong tokens"
    record = book.record("liar")
    assert book.is_banned("liar") and record.banned_until == NOW + 3600 and record.mismatches == 3
    book.apply_statement(statement_value(mismatches=0, banned_until=0.0))  # cannot clear what we hold
    assert book.is_banned("liar") and book.record("liar").mismatches == 3


@pytest.mark.parametrize("value, words", [
    (statement_value(signer=STRANGER, banned_until=NOW + 3600), "not a gateway this client trusts"),
    (statement_value(issuer="12D3KooWsomeoneelse", banned_until=NOW + 3600), "issued by"),
    (statement_value(expiration=NOW - 1), "expired"),
    (statement_value(expiration=NOW + 365 * DAY), "expired, or valid for more than"),
    ({**statement_value(), "body": statement_value(subject="victim")["body"]}, "signature"),
    ({**statement_value(), "key": "swarmllm.v1.reputation.victim"}, "addressed to"),
    ("not a statement", "not a signed statement"),
])
def test_claims_about_third_parties_are_refused_unless_a_trusted_gateway_signed_them(value, words):
    with pytest.raises(RecordRejected, match=words):
        verify_statement(value, {GATEWAY.peer_id}, now=NOW)
    book = Reputation(trusted={GATEWAY.peer_id}, clock=lambda: NOW)
    with pytest.raises(RecordRejected):
        book.apply_statement(value)
    assert book.record("liar") is None and book.record("victim") is None


def test_the_trusted_gateways_file_lists_peer_ids_with_comments(tmp_path):
    path = tmp_path / "trusted-gateways"
    assert load_trusted_gateways(path) == frozenset()
    path.write_text(f"# gateways I trust\n{GATEWAY.peer_id}  # the project's\n\n  {STRANGER.peer_id}\n")
    assert load_trusted_gateways(path) == {GATEWAY.peer_id, STRANGER.peer_id}


# --- the routing hooks -------------------------------------------------------------------
def rec(peer, start, end, throughput=100.0):
    return ServerRecord(peer_id=peer, model_id="m", start=start, end=end, n_blocks=30, throughput=throughput,
                        free_cache_tokens=1000, max_session_length=4096)


def peers(chain):
    return [link.peer_id for link in chain]


TWINS = [rec("a1", 0, 15), rec("a2", 0, 15), rec("b1", 15, 30), rec("b2", 15, 30)]
RTTS = {"a1": 0.010, "a2": 0.0101, "b1": 0.010, "b2": 0.0102}  # equally good within measurement noise


def test_equally_good_chains_are_chosen_at_random_per_session_and_fixed_by_the_seed():
    unseeded = {tuple(peers(plan_chain("m", 30, TWINS, RTTS))) for _ in range(5)}
    assert len(unseeded) == 1  # no seed: deterministic, as before
    chosen = {seed: tuple(peers(plan_chain("m", 30, TWINS, RTTS, seed=seed))) for seed in range(40)}
    assert len(set(chosen.values())) == 4  # every combination of the twins is used ...
    counts = {peer: sum(peer in chain for chain in chosen.values()) for peer in RTTS}
    assert min(counts.values()) >= 8  # ... and every twin gets a fair share of sessions
    assert all(tuple(peers(plan_chain("m", 30, TWINS, RTTS, seed=seed))) == chain for seed, chain in chosen.items())


def test_a_clearly_better_chain_is_never_given_up_for_randomness():
    records = TWINS + [rec("fast", 0, 30, throughput=1000.0)]
    rtts = {**RTTS, "fast": 0.010}
    assert all(peers(plan_chain("m", 30, records, rtts, seed=seed)) == ["fast"] for seed in range(20))
    twins = [rec("a1", 0, 30), rec("a2", 0, 30)]
    measured = {"a1": 0.001, "a2": 0.001 * (1 + 2 * TIE_TOLERANCE)}  # seconds per block, as the client timed them
    assert all(peers(plan_chain("m", 30, twins, {"a1": 0.01, "a2": 0.01}, block_seconds=measured, seed=s)) == ["a1"]
               for s in range(20))


def test_banned_peers_are_excluded_and_penalised_peers_avoided_while_others_exist():
    book = Reputation(clock=lambda: NOW)
    book.record_mismatch("a1")
    book.ban("b1")
    plan = plan_chain("m", 30, TWINS, RTTS, exclude=book.banned_peers(), penalties=book.penalties(RTTS))
    assert peers(plan) == ["a2", "b2"]
    alone = [rec("a1", 0, 15), rec("b2", 15, 30)]
    assert peers(plan_chain("m", 30, alone, RTTS, penalties=book.penalties(RTTS))) == ["a1", "b2"]  # still usable


def test_the_memory_store_and_the_sqlite_store_hold_the_same_records(tmp_path):
    memory, sqlite = MemoryStore(), SqliteReputationStore(tmp_path / "r.sqlite")
    for store in (memory, sqlite):
        book = Reputation(store, clock=lambda: NOW)
        book.record_verified("p", 3)
        book.record_timeout("p")
    assert list(memory.load_all()) == list(sqlite.load_all())
    sqlite.close()
