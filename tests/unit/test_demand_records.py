"""Demand records: honest ones pass; forged, another signer's, misplaced and out-of-range ones are refused."""

from __future__ import annotations

import pytest

from signed_records import NOW, envelope, forged
from swarmllm.protocol import RecordRejected, check_record
from swarmllm.protocol.demand import _MODEL_ID, DemandRecord, demand_key
from swarmllm.protocol.records import MODEL_ID_PATTERN, parse_demand_records
from swarmllm.swarm.identity import Identity

G, H = Identity.generate(), Identity.generate()  # an honest gateway, a hostile one
KEY = demand_key("smollm2-135m")


def demand(identity: Identity = G, **changes) -> DemandRecord:
    values = dict(gateway_id=identity.peer_id, model_id="smollm2-135m", requests_per_minute=12.0,
                  tokens_per_minute=3000.0, queue_length=2, window=60.0, announced_at=NOW)
    values.update(changes)
    return DemandRecord(**values)


def test_an_honest_demand_record_passes():
    record = demand()
    assert check_record(envelope(G, KEY, record), KEY, G.peer_id, now=NOW) == record


def test_the_model_id_pattern_is_the_records_one():
    assert _MODEL_ID == MODEL_ID_PATTERN


def _body(**changes) -> dict:
    values = demand().model_dump()
    values.update(changes)
    return values


HOSTILE = [
    ("signed by another peer than the gateway it names", forged(H, KEY, _body(), kind="demand"), KEY, H.peer_id,
     "signed by peer"),
    ("stored under the gateway's subkey but signed by another key", forged(H, KEY, _body(), kind="demand"), KEY,
     G.peer_id, "but signed by peer"),
    ("stored under another model's key", envelope(G, demand_key("gemma3-270m"), demand()), demand_key("gemma3-270m"),
     G.peer_id, "stored under"),
    ("inflated tokens per minute", forged(G, KEY, _body(tokens_per_minute=1e12), kind="demand"), KEY, G.peer_id,
     "invalid demand"),
    ("negative requests", forged(G, KEY, _body(requests_per_minute=-1), kind="demand"), KEY, G.peer_id,
     "invalid demand"),
    ("infinite tokens", forged(G, KEY, _body(tokens_per_minute=float("inf")), kind="demand"), KEY, G.peer_id,
     "invalid"),
    ("a huge queue", forged(G, KEY, _body(queue_length=10**9), kind="demand"), KEY, G.peer_id, "invalid demand"),
    ("a zero window", forged(G, KEY, _body(window=0), kind="demand"), KEY, G.peer_id, "invalid demand"),
    ("an unknown field", forged(G, KEY, _body(weight=100), kind="demand"), KEY, G.peer_id, "invalid demand"),
    ("announced in the future", forged(G, KEY, _body(announced_at=NOW + 600), kind="demand"), KEY, G.peer_id,
     "future"),
]


@pytest.mark.parametrize("name,value,key,subkey,says", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_demand_records_are_refused(name, value, key, subkey, says):
    with pytest.raises(RecordRejected, match=says):
        check_record(value, key, subkey, now=NOW)


def test_the_reader_keeps_only_valid_records_one_per_gateway():
    found = {G.peer_id: envelope(G, KEY, demand()),
             H.peer_id: forged(H, KEY, _body(gateway_id=H.peer_id, tokens_per_minute=1e12), kind="demand"),
             "12D3KooWforged": forged(H, KEY, _body(), kind="demand", subkey=G.peer_id)}
    assert parse_demand_records(found, "smollm2-135m", now=NOW) == [demand()]
