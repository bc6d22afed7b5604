"""Trust radii (client/radius.py): parsing, classification by verified owner certificates, widening."""

from __future__ import annotations

import pytest

from signed_records import NOW, server_record
from swarmllm.client.radius import (
    Radius, RadiusSpec, choose_radius, covers_model, parse_radius, radius_of, within,
)
from swarmllm.owners import OwnerKey
from swarmllm.protocol import ServerState
from swarmllm.protocol.owners import issue_certificate
from swarmllm.swarm.identity import Identity

ME, FRIEND, STRANGER = OwnerKey.generate(), OwnerKey.generate(), OwnerKey.generate()
TRUSTED = frozenset({FRIEND.owner_id})


def certified(owner: OwnerKey, start: int = 0, end: int = 30, node: Identity = None, cert_node: Identity = None,
              now: float = NOW - 60, lifetime: float = 86400.0, **fields):
    node = node or Identity.generate()
    cert = issue_certificate(owner.public_key, owner.sign, (cert_node or node).peer_id, now=now, lifetime=lifetime)
    return server_record(node, start, end, owner=cert, **fields)


def classify(record) -> Radius:
    return radius_of(record, ME.owner_id, TRUSTED, now=NOW)


def test_specs_parse_from_the_narrowest_to_the_widest():
    assert parse_radius("trusted") == RadiusSpec((Radius.TRUSTED,))
    spec = parse_radius("Trusted+public")
    assert (spec.preferred, spec.widest, str(spec)) == (Radius.TRUSTED, Radius.PUBLIC, "trusted+public")
    assert parse_radius("local+trusted+public").steps == (Radius.LOCAL, Radius.TRUSTED, Radius.PUBLIC)
    assert parse_radius("local").allows(Radius.LOCAL) and not parse_radius("local").allows(Radius.TRUSTED)
    for bad, says in (("everyone", "use local, trusted or public"), ("public+local", "narrowest to the widest"),
                      ("trusted+trusted", "each once"), ("", "use local")):
        with pytest.raises(ValueError, match=says):
            parse_radius(bad)


def test_radii_nest():
    assert Radius.PUBLIC.includes(Radius.TRUSTED) and Radius.TRUSTED.includes(Radius.LOCAL)
    assert not Radius.LOCAL.includes(Radius.TRUSTED) and not Radius.TRUSTED.includes(Radius.PUBLIC)


def test_servers_are_classified_by_whose_certificate_they_carry():
    assert classify(certified(ME)) == Radius.LOCAL
    assert classify(certified(FRIEND)) == Radius.TRUSTED
    assert classify(certified(STRANGER)) == Radius.PUBLIC
    assert classify(server_record(Identity.generate())) == Radius.PUBLIC  # no owner
    assert radius_of(certified(ME), None, TRUSTED, now=NOW) == Radius.PUBLIC  # a client without an owner key


@pytest.mark.parametrize("case, record", [
    ("my certificate of another node copied into a stranger's record", lambda: certified(ME, cert_node=Identity.generate())),
    ("a certificate of a stranger that claims my owner key", lambda: _claims_my_key(certified(STRANGER))),
    ("an expired certificate", lambda: certified(FRIEND, now=NOW - 3 * 86400)),
])
def test_a_certificate_that_does_not_hold_puts_the_server_in_public(case, record):
    assert classify(record()) == Radius.PUBLIC


def _claims_my_key(record):
    return record.model_copy(update={"owner": record.owner.model_copy(update={"owner_key": ME.public_key})})


def test_within_keeps_the_servers_inside_a_radius():
    mine, friends, strangers = certified(ME), certified(FRIEND), certified(STRANGER)
    records = [mine, friends, strangers]
    assert within(records, Radius.LOCAL, ME.owner_id, TRUSTED, now=NOW) == [mine]
    assert within(records, Radius.TRUSTED, ME.owner_id, TRUSTED, now=NOW) == [mine, friends]
    assert within(records, Radius.PUBLIC, ME.owner_id, TRUSTED, now=NOW) == records


def test_covering_counts_online_servers_only():
    assert covers_model([certified(ME, 0, 10), certified(ME, 10, 30)], 30)
    assert not covers_model([certified(ME, 0, 10), certified(ME, 11, 30)], 30)
    assert not covers_model([certified(ME, 0, 30, state=ServerState.LEAVING)], 30)


def test_choose_radius_widens_only_as_the_spec_allows():
    mine_head, friends_tail, strangers_tail = certified(ME, 0, 15), certified(FRIEND, 15, 30), certified(STRANGER, 15, 30)
    both = [mine_head, friends_tail, strangers_tail]
    assert choose_radius(both, parse_radius("local+trusted+public"), 30, ME.owner_id, TRUSTED, now=NOW) == \
        (Radius.TRUSTED, [mine_head, friends_tail])
    assert choose_radius(both, parse_radius("local"), 30, ME.owner_id, TRUSTED, now=NOW) is None
    no_friend = [mine_head, strangers_tail]
    assert choose_radius(no_friend, parse_radius("trusted"), 30, ME.owner_id, TRUSTED, now=NOW) is None
    assert choose_radius(no_friend, parse_radius("trusted+public"), 30, ME.owner_id, TRUSTED, now=NOW) == \
        (Radius.PUBLIC, no_friend)
