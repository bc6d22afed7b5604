"""Load-aware routing and the price ceiling (client/load.py, client/routing.py): pure planner tests."""

import pytest

from swarmllm.client.load import CLAIM_CAP, claimed_load, load_factor, server_loads
from swarmllm.client.routing import PriceUnavailableError, chain_price, plan_chain
from swarmllm.protocol import ServerRecord


def rec(peer, start, end, *, throughput=100.0, sessions=0, queued=0, price=0.0, n=4):
    return ServerRecord(peer_id=peer, model_id="m", start=start, end=end, n_blocks=n, throughput=throughput,
                        free_cache_tokens=4096, max_session_length=4096, active_sessions=sessions,
                        queued_steps=queued, price=price)


def two_chains(**kw):
    """Chain A (a0 [0,2) + a1 [2,4)) slightly faster than chain B (b0 + b1)."""
    return [rec("a0", 0, 2, throughput=110.0, **kw), rec("a1", 2, 4, throughput=110.0, **kw),
            rec("b0", 0, 2, **kw), rec("b1", 2, 4, **kw)]


def peers(chain):
    return [link.peer_id for link in chain]


def test_speed_only_piles_onto_the_fastest_chain_and_load_spreads():
    records = two_chains()
    rtts = {r.peer_id: 0.001 for r in records}
    # The priors are capped at the median, so measured speeds say A is 10% faster.
    seconds = {"a0": 0.9e-3, "a1": 0.9e-3, "b0": 1e-3, "b1": 1e-3}
    opened = {}
    chosen = []
    for _ in range(8):  # eight sessions opened one after another, none closed
        chain = plan_chain("m", 4, records, rtts, block_seconds=seconds, loads=server_loads(records, opened))
        chosen.append(peers(chain))
        for peer in peers(chain):
            opened[peer] = opened.get(peer, 0) + 1
    assert peers(plan_chain("m", 4, records, rtts, block_seconds=seconds)) == ["a0", "a1"]  # speed only: always A
    assert sum(c == ["a0", "a1"] for c in chosen) == 4 and sum(c == ["b0", "b1"] for c in chosen) == 4


def test_a_liar_claiming_no_load_does_not_attract_everything():
    # b0/b1 claim 0 load; a0/a1 honestly report the sessions of other clients.
    records = [rec("a0", 0, 2, sessions=2), rec("a1", 2, 4, sessions=2), rec("b0", 0, 2), rec("b1", 2, 4)]
    opened = {}
    chosen = []
    for _ in range(8):
        chain = plan_chain("m", 4, records, loads=server_loads(records, opened))
        chosen.append(peers(chain))
        for peer in peers(chain):
            opened[peer] = opened.get(peer, 0) + 1
    # The liar gets the first sessions (its claim is believed as a floor), then our own count takes over.
    assert chosen.count(["a0", "a1"]) >= 3 and chosen.count(["b0", "b1"]) <= 5


def test_claims_are_capped_and_our_count_is_a_floor():
    liar = rec("x", 0, 4, sessions=10**6, queued=10**5)
    assert claimed_load(liar) == CLAIM_CAP
    assert server_loads([rec("y", 0, 4)], {"y": 3}) == {"y": 3.0}
    assert load_factor(0) == 1.0 and load_factor(2) > load_factor(1) > 1.0


def test_price_ceiling_avoids_dear_servers():
    records = [rec("fast", 0, 4, throughput=1000.0, price=5.0), rec("slow", 0, 4, price=1.0)]
    seconds = {"fast": 1e-4, "slow": 1e-3}
    assert peers(plan_chain("m", 4, records, block_seconds=seconds)) == ["fast"]
    chain = plan_chain("m", 4, records, block_seconds=seconds, max_price=2.0)
    assert peers(chain) == ["slow"] and chain_price(chain) == 1.0


def test_price_is_summed_over_the_chain():
    # Each cheap half is under the ceiling but the fast chain of two costs 3 in all; the full server costs 2.
    records = [rec("h0", 0, 2, throughput=1000.0, price=1.5), rec("h1", 2, 4, throughput=1000.0, price=1.5),
               rec("full", 0, 4, price=2.0)]
    seconds = {"h0": 1e-5, "h1": 1e-5, "full": 1e-2}
    rtts = {"h0": 1e-3, "h1": 1e-3, "full": 1e-3}
    assert peers(plan_chain("m", 4, records, rtts, block_seconds=seconds)) == ["h0", "h1"]
    assert peers(plan_chain("m", 4, records, rtts, block_seconds=seconds, max_price=2.5)) == ["full"]


def test_no_chain_under_the_ceiling_names_the_cheapest_price():
    records = [rec("a", 0, 2, price=1.0), rec("b", 2, 4, price=2.0), rec("c", 2, 4, price=4.0)]
    with pytest.raises(PriceUnavailableError) as caught:
        plan_chain("m", 4, records, max_price=2.5)
    assert caught.value.cheapest == 3.0 and caught.value.code == "price_unavailable"
    assert "at least that" in str(caught.value) and "3" in str(caught.value)
    assert peers(plan_chain("m", 4, records, max_price=3.0)) == ["a", "b"]


@pytest.mark.parametrize("bad", [dict(price=-1.0), dict(price=float("inf")), dict(queued=-1)])
def test_records_refuse_bad_price_and_load(bad):
    with pytest.raises(ValueError):
        rec("p", 0, 4, **bad)
