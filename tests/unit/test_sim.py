"""The swarm simulator (swarmllm.sim): its arithmetic on cases worked by hand, and that it decides
with the product's own policies (routing spreads load, failover replays, verification catches liars)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from swarmllm.sim import simulate
from swarmllm.sim.scenario import ScenarioError, parse

DECODE, PREFILL, HEAD = 0.001, 0.0002, 0.004   # s per block per position, per prompt position, LM head per row
HOP, LOOP = 0.0016, 0.0005                     # s per hop, loopback round trip


def chain(spans=((0, 10), (10, 20), (20, 30)), **extra) -> dict:
    scenario = {
        "name": "test", "duration_s": 60, "model": "smollm2-135m",
        "network": {"model": "relays", "hop_overhead_ms": HOP * 1000, "loopback_rtt_ms": LOOP * 1000},
        "hardware": {"here": {"memory_gb": 20, "threads": 1, "profile": {
            "decode_by_batch": {1: DECODE, 2: 1.5 * DECODE, 4: 2.5 * DECODE, 8: 4 * DECODE},
            "prefill_per_position": PREFILL, "head_per_position": HEAD}}},
        "nodes": [{"hardware": "here", "blocks": list(span)} for span in spans],
        "server": {"rebalance_period_s": 0},
        "clients": {"hardware": "here", "concurrency": 1, "sessions": 1, "prompt_tokens": 10, "new_tokens": 21,
                    "start_s": 5, "step_overhead_ms": 0},
    }
    for key, value in extra.items():
        scenario[key] = {**scenario[key], **value} if isinstance(value, dict) and key in scenario else value
    return scenario


def test_a_plain_chain_costs_its_links_compute_and_head():
    r = simulate(chain())
    links = 4 * (LOOP / 2 + HOP)                  # client -> A -> B -> C -> client
    per_token = links + 30 * DECODE + HEAD
    assert r["sessions"]["completed"] == 1
    assert r["tokens_per_s_per_session"]["mean"] == pytest.approx(1 / per_token, rel=1e-6)
    ttft = LOOP + 2 * LOOP + links + 30 * 10 * PREFILL + HEAD   # ping the servers, open streams, the prompt
    assert r["ttft_s"]["mean"] == pytest.approx(ttft, rel=1e-4)   # (+ the prompt frame on an unlimited wire)


def test_the_ring_keeps_the_client_out_of_the_loop():
    r = simulate(chain(decoding={"ring": True}))
    per_token = 3 * (LOOP / 2 + HOP) + 30 * DECODE + HEAD   # A -> B -> C -> A, the head on C
    assert r["token_latency_s"]["p50"] == pytest.approx(per_token, rel=1e-6)
    # The prompt's step still returns to the client, which samples the first token and starts the ring.
    plain = simulate(chain())
    assert r["ttft_s"]["mean"] == pytest.approx(plain["ttft_s"]["mean"], rel=1e-9)


def test_wan_delays_count_per_link_into_each_node():
    scenario = chain()
    for node in scenario["nodes"]:
        node["delay_ms"] = 20
    r = simulate(scenario)
    per_token = 4 * (LOOP / 2 + 0.020 + HOP) + 30 * DECODE + HEAD
    assert r["tokens_per_s_per_session"]["mean"] == pytest.approx(1 / per_token, rel=1e-6)


def test_routing_spreads_concurrent_sessions_over_parallel_chains():
    spans = [(0, 30), (0, 30)]
    r = simulate(chain(spans, clients={"concurrency": 8, "sessions": 8}))
    busy = sorted(r["busy_share"].values())
    assert r["sessions"]["completed"] == 8
    assert busy[0] > 0.3 * busy[1], busy       # both chains worked: load-aware routing (client/load.py)


def test_a_crashed_server_is_replaced_and_its_positions_replayed():
    scenario = chain([(0, 10), (10, 20), (20, 30), (10, 20)], failures=[{"at_s": 5.3, "node": 1, "how": "vanish"}],
                     clients={"new_tokens": 200})
    r = simulate(scenario)
    assert r["sessions"]["completed"] == 1 and r["failovers"] == 1
    # Silence is noticed by StepTimeouts (>= 1.5 s on a fast chain), then a ping; then replay and retry.
    assert 1.5 < r["failover_seconds"]["mean"] < 6.0


def test_without_a_standby_the_session_waits_then_fails():
    r = simulate(chain(failures=[{"at_s": 5.3, "node": 1, "how": "vanish"}], duration_s=120,
                       clients={"new_tokens": 200}))
    assert r["sessions"]["failed"] == 1 and r["sessions"]["failure_reasons"] == ["no route"]


def test_verification_catches_a_liar_that_otherwise_serves_wrong_tokens():
    spans = [(0, 15), (15, 30), (15, 30)]
    nodes = [{"hardware": "here", "blocks": [0, 15]}, {"hardware": "here", "blocks": [15, 30], "liar": True},
             {"hardware": "here", "blocks": [15, 30], "delay_ms": 30}]
    unchecked = simulate(chain(spans, nodes=nodes))
    checked = simulate(chain(spans, nodes=nodes, decoding={"verify": "sample"}))
    assert unchecked["verification"]["wrong_tokens"] == 21
    assert checked["verification"]["liars_caught"] >= 1 and checked["verification"]["wrong_tokens"] == 0
    assert checked["sessions"]["completed"] == 1


def test_speculation_pays_on_a_slow_network():
    scenario = chain()
    for node in scenario["nodes"]:
        node["delay_ms"] = 20
    plain = simulate(scenario)
    fast = simulate({**scenario, "decoding": {"speculative_acceptance": 0.7}})
    assert fast["tokens_per_s_per_session"]["mean"] > 1.5 * plain["tokens_per_s_per_session"]["mean"]


def test_churn_keeps_nodes_coming_and_going():
    scenario = {"name": "churn", "seed": 3, "duration_s": 1800, "warmup_s": 300, "model": "llama-8b",
                "network": {"model": "geo"}, "nodes": [{"mix": {"gpu-12gb": 1.0}, "count": 6}],
                "churn": {"arrivals_per_hour": 20, "mean_online_minutes": 20},
                "clients": {"hardware": "gpu-12gb", "concurrency": 2, "new_tokens": 32}}
    r = simulate(scenario)
    assert r["nodes"]["joined"] > 6 and r["nodes"]["departed"] > 0
    assert 0.0 < r["covered_share"] <= 1.0
    assert r["sessions"]["completed"] > 0


@pytest.mark.parametrize("data, where", [
    ({"nodez": []}, "scenario.nodez"),
    ({"duration_s": "long"}, "scenario.duration_s"),
    ({"model": "gpt-5"}, "model"),
    ({"nodes": [{"hardware": "abacus"}]}, "nodes[0]"),
    ({"nodes": [{"hardware": "gpu-8gb", "blocks": [0, 99]}]}, "nodes[0].blocks"),
    ({"decoding": {"wire": "int3"}}, "decoding.wire"),
    ({"hardware": {"x": {"memory_gb": 8, "warp": 9}}}, "hardware.x.warp"),
])
def test_a_malformed_scenario_names_its_key(data, where):
    with pytest.raises(ScenarioError, match=where.replace("[", r"\[").replace("]", r"\]")):
        parse(data)


def test_the_cli_prints_a_summary_and_refuses_a_bad_file(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("name: tiny\nduration_s: 30\nmodel: llama-8b\nnodes: [{hardware: gpu-24gb, count: 2}]\n"
                    "clients: {hardware: gpu-24gb, sessions: 2, new_tokens: 8, start_s: 20}\n")
    out = subprocess.run([sys.executable, "-m", "swarmllm.cli", "simulate", str(good)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "tokens/s per session" in out.stdout and "tiny" in out.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("clients: {sesions: 2}\n")
    out = subprocess.run([sys.executable, "-m", "swarmllm.cli", "simulate", str(bad)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and "clients.sesions" in out.stderr


def test_a_killed_process_is_noticed_at_once_unlike_a_vanished_machine():
    spans = [(0, 10), (10, 20), (20, 30), (10, 20)]
    killed = simulate(chain(spans, failures=[{"after_tokens": 5, "hop": 1, "how": "kill"}],
                            clients={"new_tokens": 40}))
    vanished = simulate(chain(spans, failures=[{"after_tokens": 5, "hop": 1, "how": "vanish"}],
                              clients={"new_tokens": 40}))
    assert killed["failovers"] == vanished["failovers"] == 1
    assert killed["failover_seconds"]["mean"] < 0.2 < 1.5 < vanished["failover_seconds"]["mean"]
    assert killed["per_session"][0]["tokens"] == 40
