"""The pure model chooser: demand against announced throughput, disk preference, hysteresis, no gaps."""

from __future__ import annotations

import math

from swarmllm.protocol import ServerRecord
from swarmllm.protocol.demand import DemandRecord
from swarmllm.server.model_choice import (
    PER_GATEWAY_CAP, ModelView, aggregate_demand, choose_model, plan_model_move, pressure,
)

SMOL, GEMMA = "smollm2-135m", "gemma3-270m"


def server(peer: str, model: str, start: int, end: int, n_blocks: int, throughput: float = 10.0) -> ServerRecord:
    return ServerRecord(peer_id=peer, model_id=model, start=start, end=end, n_blocks=n_blocks, throughput=throughput,
                        free_cache_tokens=1000, max_session_length=64)


def view(model: str, n_blocks: int, servers=(), demand: float = 0.0, on_disk: bool = True) -> ModelView:
    return ModelView(model, n_blocks, tuple(servers), demand, on_disk)


def demand(gateway: str, tokens: float, model: str = SMOL, at: float = 0.0) -> DemandRecord:
    return DemandRecord(gateway_id=gateway, model_id=model, requests_per_minute=1, tokens_per_minute=tokens,
                        queue_length=0, window=60, announced_at=at)


def test_an_uncovered_model_with_demand_wins_over_a_covered_one():
    smol = view(SMOL, 30, [server("a", SMOL, 0, 30, 30)], demand=1e6)
    gemma = view(GEMMA, 18, [], demand=10)
    assert pressure(gemma) == math.inf
    assert choose_model([smol, gemma]) == GEMMA


def test_demand_is_weighed_against_announced_throughput():
    busy = view(SMOL, 30, [server("a", SMOL, 0, 30, 30, throughput=10)], demand=1000)   # 100 per token/s
    served = view(GEMMA, 18, [server("b", GEMMA, 0, 18, 18, throughput=100)], demand=2000)  # 20 per token/s
    assert choose_model([busy, served]) == SMOL


def test_a_model_on_disk_is_preferred_unless_another_clearly_needs_the_node():
    smol = view(SMOL, 30, [server("a", SMOL, 0, 30, 30)], demand=1000, on_disk=True)
    gemma = view(GEMMA, 18, [server("b", GEMMA, 0, 18, 18)], demand=1500, on_disk=False)
    assert choose_model([smol, gemma]) == SMOL          # 1.5x the pressure is less than the disk bonus
    gemma_far = view(GEMMA, 18, [server("b", GEMMA, 0, 18, 18)], demand=5000, on_disk=False)
    assert choose_model([smol, gemma_far]) == GEMMA


def test_without_demand_the_least_served_model_on_disk_is_chosen():
    smol = view(SMOL, 30, [server("a", SMOL, 0, 30, 30)])
    gemma = view(GEMMA, 18, [])
    assert choose_model([smol, gemma]) == GEMMA
    assert choose_model([smol, view(GEMMA, 18, [], on_disk=False)]) == SMOL
    assert choose_model([]) is None


def test_a_half_served_model_is_completed_before_an_unserved_one_is_started():
    half = view(SMOL, 30, [server("a", SMOL, 0, 15, 30)])
    assert choose_model([half, view(GEMMA, 18, [])]) == SMOL
    assert choose_model([half, view(GEMMA, 18, [server("b", GEMMA, 0, 17, 18)])]) == GEMMA  # closer to whole


def test_a_node_follows_a_clear_demand_shift():
    here = view(SMOL, 30, [server("a", SMOL, 0, 30, 30)], demand=0)
    there = view(GEMMA, 18, [server("b", GEMMA, 0, 18, 18)], demand=1000)
    assert plan_model_move(here, (0, 30), [here, there]) == GEMMA


def test_hysteresis_keeps_a_node_where_it_is_for_a_small_gain():
    here = view(SMOL, 30, [server("a", SMOL, 0, 30, 30)], demand=1000)
    there = view(GEMMA, 18, [server("b", GEMMA, 0, 18, 18)], demand=1400)  # 1.4x < 1 + 0.5
    assert plan_model_move(here, (0, 30), [here, there]) is None
    more = view(GEMMA, 18, [server("b", GEMMA, 0, 18, 18)], demand=1600)
    assert plan_model_move(here, (0, 30), [here, more]) == GEMMA


def test_the_only_server_of_a_block_never_leaves_whatever_the_demand():
    # Others cover [0, 20) only: this node alone serves [20, 30).
    here = view(SMOL, 30, [server("a", SMOL, 0, 20, 30)], demand=0)
    there = view(GEMMA, 18, [], demand=1e9)
    assert plan_model_move(here, (20, 30), [here, there]) is None
    assert plan_model_move(view(SMOL, 30, [], demand=0), (0, 30), [there]) is None


def test_nodes_already_arriving_count_as_capacity():
    here = view(SMOL, 30, [server("a", SMOL, 0, 30, 30)], demand=100)
    alone = view(GEMMA, 18, [server("b", GEMMA, 0, 18, 18)], demand=400)
    assert plan_model_move(here, (0, 30), [here, alone]) == GEMMA
    joined = ModelView(GEMMA, 18, alone.others, 400, True, arriving=30.0)  # 400/40 = 10 = 1x: stay
    assert plan_model_move(here, (0, 30), [here, joined]) is None


def test_one_gateways_claim_is_capped_and_untrusted_gateways_count_less():
    liar = demand("liar", 1e9)
    assert aggregate_demand([liar]) == PER_GATEWAY_CAP * 0.25
    honest = demand("friend", 100_000, model=GEMMA)
    assert aggregate_demand([honest], trusted=frozenset({"friend"})) == 100_000
    # A trusted gateway's honest demand outweighs a single untrusted liar at any claimed volume.
    smol = view(SMOL, 30, [server("a", SMOL, 0, 30, 30)], demand=aggregate_demand([liar]))
    gemma = view(GEMMA, 18, [server("b", GEMMA, 0, 18, 18)],
                 demand=aggregate_demand([honest], trusted=frozenset({"friend"})))
    assert choose_model([smol, gemma]) == GEMMA


def test_only_the_newest_record_of_a_gateway_counts():
    assert aggregate_demand([demand("g", 100, at=1), demand("g", 900, at=2)], trusted=frozenset({"g"})) == 900
