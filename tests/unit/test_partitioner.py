"""Automatic partitioner (pure) and `swarmllm plan`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from swarmllm.protocol import ServerRecord
from swarmllm.server.partitioner import (
    InsufficientMemoryError, Machine, chain_latency, node_span_length, parse_machines, partition,
)

MiB = 2**20
BLOCK = 2**20 // 4  # weights per block: 1 MiB per block in float32


def machine(name, blocks, rate, rtt_ms=0.0, gpu=False):
    """A machine with room for exactly `blocks` float32 blocks (no KV reserve in these tests)."""
    return Machine(name, blocks * MiB, rate, rtt_ms / 1000, gpu)


def plan(machines, n=30):
    return partition(machines, n, BLOCK, kv_reserve=0)


def chains(p):
    return sorted({a.chain for a in p.assignments if a.chain is not None})


def test_every_chain_covers_all_blocks_contiguously_within_memory():
    machines = [machine("a", 12, 50), machine("b", 9, 30), machine("c", 20, 80), machine("d", 7, 10),
                machine("e", 30, 40)]
    p = plan(machines)
    assert chains(p)
    for index in chains(p):
        spans = sorted((a.start, a.end) for a in p.chain(index))
        assert spans[0][0] == 0 and spans[-1][1] == 30
        assert all(prev[1] == nxt[0] for prev, nxt in zip(spans, spans[1:]))
    room = {m.name: round(m.memory_bytes / MiB) for m in machines}
    for a in p.assignments:
        assert 0 <= a.start < a.end <= 30 and a.blocks <= room[a.machine.name]
    assert len({a.machine.name for a in p.assignments}) == len(p.assignments)  # one span per machine


def test_spans_are_proportional_to_speed_and_the_slow_machine_does_not_set_the_pace():
    fast, medium, slow = machine("fast", 20, 300), machine("medium", 20, 200), machine("slow", 20, 100)
    p = plan([slow, fast, medium])
    chain = {a.machine.name: a.blocks for a in p.chain(0)}
    assert chain == {"fast": 18, "medium": 12}  # 3:2, equal stage times (60 ms each)
    # The slow machine is not in the chain (it would add a 50 ms stage); it reinforces blocks instead.
    extra = [a for a in p.assignments if a.machine.name == "slow"]
    assert len(extra) == 1 and extra[0].chain is None
    even = chain_latency([fast, medium], [15, 15])
    assert p.chain_latencies[0] < even
    assert p.tokens_per_second == pytest.approx(1 / (18 / 300 + 12 / 200 + 2 * 0.002))


def test_proportional_split_respects_memory_caps():
    # No two of them hold 30 blocks: all three form the chain. Proportional would be 15/7.5/7.5;
    # the fast one is capped at 12 and the other two share the rest equally.
    p = plan([machine("a", 12, 60), machine("b", 12, 30), machine("c", 12, 30)])
    assert {a.machine.name: a.blocks for a in p.chain(0)} == {"a": 12, "b": 9, "c": 9}


def test_redundancy_when_capacity_allows():
    p = plan([machine("a", 30, 100), machine("b", 30, 100), machine("c", 10, 100)])
    assert chains(p) == [0, 1]  # two full chains: a and b each hold the whole model
    assert len(p.chain_latencies) == 2
    extra = [a for a in p.assignments if a.chain is None]
    assert [a.machine.name for a in extra] == ["c"]


def test_delays_count_a_far_fast_machine_loses_to_a_near_one():
    near, far = machine("near", 30, 100), machine("far", 30, 1000, rtt_ms=800)
    p = plan([far, near])
    # near: 300 ms compute + 2 ms; far: 30 ms compute + 400 ms one way + 2 ms.
    assert [a.machine.name for a in p.chain(0)] == ["near"]
    assert p.chain_latencies == pytest.approx((0.302, 0.432))
    # Nearer, it wins, and the chain of both (more hops) is never better than either alone.
    p = plan([machine("far", 30, 1000, rtt_ms=100), near])
    assert [a.machine.name for a in p.chain(0)] == ["far"] and p.chain_latencies[0] == pytest.approx(0.082)


def test_insufficient_memory_is_a_clear_error():
    with pytest.raises(InsufficientMemoryError, match="hold 20 of the model's 30 blocks"):
        plan([machine("a", 10, 100), machine("b", 10, 100)])


def test_kv_reserve_and_gpu_weights_count():
    # 40 MiB: 8 MiB KV reserve, 32 float32 blocks of 1 MiB -> all 30; as a GPU (16-bit), 64 -> still 30.
    cpu = partition([Machine("cpu", 40 * MiB, 10)], 30, BLOCK, kv_reserve=8 * MiB)
    assert [(a.start, a.end) for a in cpu.assignments] == [(0, 30)]
    with pytest.raises(InsufficientMemoryError):
        partition([Machine("cpu", 20 * MiB, 10)], 30, BLOCK, kv_reserve=8 * MiB)
    gpu = partition([Machine("gpu", 24 * MiB, 10, gpu=True)], 30, BLOCK, kv_reserve=8 * MiB)  # 16 MiB = 32 blocks
    assert [(a.start, a.end) for a in gpu.assignments] == [(0, 30)]


def record(peer, start, end, throughput):
    return ServerRecord(peer_id=peer, model_id="m", start=start, end=end, n_blocks=30, throughput=throughput,
                        free_cache_tokens=100, max_session_length=100)


def test_node_span_length_follows_speed_relative_to_the_swarm():
    others = [record("a", 0, 10, 10.0), record("b", 10, 20, 10.0)]  # 100 ms stages
    assert node_span_length(30, 100.0, 30, others) == 10  # same speed per block: same span
    assert node_span_length(30, 200.0, 30, others) == 20  # twice as fast: twice the blocks
    assert node_span_length(30, 25.0, 30, others) == 2    # slow: a short span, not a third of the model
    assert node_span_length(30, 200.0, 12, others) == 12  # memory caps it
    assert node_span_length(30, None, 30, others) == 10   # not measured: a third, as before
    assert node_span_length(30, 200.0, 30, []) == 10      # alone: a third, as before
    assert node_span_length(30, 0.001, 30, others) == 1


@pytest.mark.parametrize("data, message", [
    ([], "non-empty list"),
    ([{"name": "a", "throughput": 10}], "missing memory"),
    ([{"name": "a", "memory": "8GB"}], "missing throughput"),
    ([{"name": "a", "memory": "eight", "throughput": 10}], "memory must be a size"),
    ([{"name": "a", "memory": "8GB", "throughput": "fast"}], "throughput must look like"),
    ([{"name": "a", "memory": "8GB", "throughput": 10, "color": "red"}], "unknown field"),
    ([{"name": "a", "memory": "8GB", "throughput": 10, "rtt_ms": -1}], "rtt_ms"),
])
def test_machine_descriptions_are_checked(data, message):
    with pytest.raises(ValueError, match=message):
        parse_machines(data)


def test_machine_units():
    m = parse_machines({"machines": [{"name": "x", "memory": "512 MiB", "throughput": "40 tokens/s", "rtt_ms": 20},
                                     {"name": "y", "memory_gb": 2, "throughput": 5, "gpu": True}]})
    assert m[0] == Machine("x", 512 * MiB, 40.0, 0.02, False)
    assert m[1] == Machine("y", 2 * 10**9, 5.0, 0.0, True)


MACHINES_YAML = """\
# two machines of a home swarm and a rented GPU
- name: desktop
  memory: 1GB
  throughput: 300 blocks/s
  rtt_ms: 10
- name: laptop
  memory: 900MB
  throughput: 100
  rtt_ms: 30
- name: gpu
  memory: 4GiB
  throughput: 600
  gpu: true
  rtt_ms: 40
"""


def swarmllm(*args):
    return subprocess.run([sys.executable, "-m", "swarmllm.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_plan(tmp_path):
    path = tmp_path / "machines.yaml"
    path.write_text(MACHINES_YAML)
    out = swarmllm("plan", str(path), "--model", "smollm2-135m")
    assert out.returncode == 0, out.stderr
    assert "30 blocks" in out.stdout and "tokens/s per session" in out.stdout
    for name in ("desktop", "laptop", "gpu"):
        assert name in out.stdout
    out = swarmllm("plan", str(path), "--model", "smollm2-135m", "--json")
    result = json.loads(out.stdout)
    first = sorted((a["start"], a["end"]) for a in result["assignments"] if a["chain"] == 0)
    assert first[0][0] == 0 and first[-1][1] == 30
    assert result["tokens_per_second"] == pytest.approx(1 / min(result["chain_latencies_s"]))
    # smollm2-135m: 3.54 M weights per block, 14.2 MB in float32; the laptop has room for 27 after 512 MiB of KV.
    laptop = next(a for a in result["assignments"] if a["name"] == "laptop")
    assert laptop["end"] - laptop["start"] <= (900e6 - 512 * MiB) // (3540096 * 4)


def test_cli_plan_errors(tmp_path):
    small = tmp_path / "small.json"
    small.write_text(json.dumps([{"name": "pi", "memory": "600MB", "throughput": 10}]))
    out = swarmllm("plan", str(small), "--model", "smollm2-135m")
    assert out.returncode == 2 and "blocks" in out.stderr and "Traceback" not in out.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("- name: a\n  memory: 8GB\n")
    out = swarmllm("plan", str(bad), "--model", "smollm2-135m")
    assert out.returncode == 2 and "missing throughput" in out.stderr


def test_cli_plan_yaml_without_pyyaml_is_one_sentence(tmp_path, monkeypatch, capsys):
    from swarmllm.cli import main

    path = tmp_path / "machines.yaml"
    path.write_text(MACHINES_YAML)
    monkeypatch.setitem(sys.modules, "yaml", None)  # PyYAML not installed: JSON still works, YAML says what to do
    assert main(["plan", str(path), "--model", "smollm2-135m"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "`pip install pyyaml`" in error
