"""The volunteer's pure planner and its schedule / in-use rules, and machine detection on this host."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from swarmllm.protocol import ServerRecord
from swarmllm.runtime.machine import Machine, detect_machine
from swarmllm.server.model_choice import ModelView
from swarmllm.volunteer.plan import KV_MAX_BYTES, Candidate, Caps, plan_volunteer
from swarmllm.volunteer.schedule import Schedule, UseDetector, control, serving_verdict

SMOL, GEMMA = "smollm2-135m", "gemma3-270m"
GiB, MiB = 2**30, 2**20


def machine(memory=16 * GiB, available=12 * GiB, isa=("avx2",), disk=100 * GiB, cores=4) -> Machine:
    return Machine(os="Linux", cpu_model="test cpu", physical_cores=cores, logical_cores=cores * 2, isa=isa,
                   memory_bytes=memory, available_bytes=available, gpus=(), disk_path="/tmp", disk_free_bytes=disk)


def server(peer, model, start, end, n_blocks, throughput=10.0) -> ServerRecord:
    return ServerRecord(peer_id=peer, model_id=model, start=start, end=end, n_blocks=n_blocks, throughput=throughput,
                        free_cache_tokens=1000, max_session_length=64)


def candidate(model, n_blocks, servers=(), demand=0.0, on_disk=True, params=3_540_096, download=0, rate=None):
    return Candidate(ModelView(model, n_blocks, tuple(servers), demand, on_disk), params, download, rate)


def test_the_plan_fills_the_blocks_nobody_serves_and_says_why():
    smol = candidate(SMOL, 30, [server("a", SMOL, 0, 20, 30)])
    plan, problem = plan_volunteer(machine(), Caps(), [smol])
    assert problem is None
    assert (plan.model_id, plan.end) == (SMOL, 30) and plan.start >= 20
    assert plan.dtype == "float32" and plan.threads == 4 and plan.cache_memory_bytes == KV_MAX_BYTES
    assert any("served by nobody" in r for r in plan.reasons)
    assert plan.weakest_block_before == 0.0


def test_a_measured_block_rate_sizes_the_span_and_gives_its_tokens_per_second():
    # others run 10 blocks at 10 tokens/s (a 0.1 s stage); 200 blocks/s here matches that with 20 blocks
    smol = candidate(SMOL, 30, [server("a", SMOL, 0, 10, 30), server("b", SMOL, 10, 20, 30),
                                server("c", SMOL, 20, 30, 30)], rate=200.0)
    plan, _ = plan_volunteer(machine(), Caps(), [smol])
    assert plan.end - plan.start == 20
    assert plan.tokens_per_second == pytest.approx(10.0)
    assert plan.weakest_block_after == pytest.approx(10.0)  # the blocks outside its span stay at 10


def test_the_memory_cap_bounds_the_span_and_a_cap_too_small_says_so():
    params = 10_000_000  # 40 MB per float32 block
    plan, _ = plan_volunteer(machine(), Caps(max_memory_bytes=200 * MiB), [candidate(SMOL, 30, params=params)])
    assert plan.memory_bytes <= 200 * MiB and plan.end - plan.start == (200 * MiB - 50 * MiB) // (params * 4)
    plan, problem = plan_volunteer(machine(), Caps(max_memory_bytes=60 * MiB), [candidate(SMOL, 30, params=params)])
    assert plan is None and "--max-memory" in problem and SMOL in problem


def test_bfloat16_machines_hold_twice_the_blocks():
    params = 10_000_000
    fp32, _ = plan_volunteer(machine(), Caps(max_memory_bytes=400 * MiB), [candidate(SMOL, 30, params=params)])
    bf16, _ = plan_volunteer(machine(isa=("avx512f", "avx512_bf16")), Caps(max_memory_bytes=400 * MiB),
                             [candidate(SMOL, 30, params=params)])
    assert bf16.dtype == "bfloat16"
    assert fp32.reasons[1].endswith("at most 7 fit in memory") and bf16.reasons[1].endswith("at most 15 fit in memory")


def test_demand_chooses_the_model_and_a_download_must_fit_the_disk():
    smol = candidate(SMOL, 30, [server("a", SMOL, 0, 30, 30)], demand=10)
    gemma = candidate(GEMMA, 18, [], demand=1000, on_disk=False, params=5_573_632, download=70 * MiB)
    plan, _ = plan_volunteer(machine(), Caps(), [smol, gemma])
    assert plan.model_id == GEMMA and plan.download_bytes == 70 * MiB
    plan, _ = plan_volunteer(machine(disk=1 * GiB), Caps(), [smol, gemma])
    assert plan.model_id == SMOL  # gemma would not fit on the disk
    plan, problem = plan_volunteer(machine(), Caps(), [smol, gemma], model="qwen")
    assert plan is None and "qwen" in problem


def test_threads_cap_and_machine_json():
    plan, _ = plan_volunteer(machine(cores=8), Caps(threads=3), [candidate(SMOL, 30)])
    assert plan.threads == 3
    assert machine().to_json()["isa"] == ["avx2"]


def test_detect_machine_reads_this_host():
    found = detect_machine()
    assert found.logical_cores >= 1 and found.memory_bytes > found.available_bytes > 0
    assert found.disk_free_bytes > 0 and found.cpu_model
    assert isinstance(found.to_json()["gpus"], list)


@pytest.mark.parametrize("text, inside, outside", [
    ("22:00-07:00", [(23, 30), (0, 0), (6, 59)], [(7, 0), (12, 0), (21, 59)]),
    ("09:00-12:00,14:00-18:00", [(9, 0), (11, 59), (14, 30)], [(12, 0), (13, 0), (18, 0)]),
    ("00:00-24:00", [(0, 0), (23, 59)], []),
])
def test_schedule_windows(text, inside, outside):
    schedule = Schedule.parse(text)
    at = lambda h, m: dt.datetime(2026, 12, 2, h, m)  # noqa: E731
    assert all(schedule.contains(at(h, m)) for h, m in inside)
    assert not any(schedule.contains(at(h, m)) for h, m in outside)


@pytest.mark.parametrize("bad", ["22-07", "25:00-07:00", "10:00-10:00", "10:61-11:00", "", "nightly"])
def test_bad_schedules_get_a_sentence(bad):
    with pytest.raises(ValueError, match="--schedule"):
        Schedule.parse(bad)


def test_use_detector_pauses_quickly_and_resumes_slowly():
    d = UseDetector(busy_percent=50, busy_samples=2, idle_samples=3)
    assert [d.feed(x) for x in (90, 10, 90, 90, 10, 10, 90, 10, 10, 10)] == \
        [False, False, False, True, True, True, True, True, True, False]
    assert serving_verdict(None, True, dt.datetime.now()) == "the machine is in use (--when-idle)"
    assert serving_verdict(Schedule.parse("01:00-02:00"), False, dt.datetime(2026, 1, 1, 3, 0)).startswith("outside")
    assert serving_verdict(Schedule.parse("01:00-02:00"), False, dt.datetime(2026, 1, 1, 1, 30)) is None


class FakeNode:
    """What control() drives: pause/resume and stop (a unit test of one component)."""

    def __init__(self, stop_after: int):
        self.paused_reason, self.calls, self._left = None, [], stop_after

    @property
    def stopped(self):
        return self._left <= 0

    def pause(self, reason):
        self.paused_reason = reason
        self.calls.append("pause")

    def resume(self):
        self.paused_reason = None
        self.calls.append("resume")

    def paused_by(self, source):
        return self.paused_reason if source == "schedule" else None

    async def wait_stopped(self, timeout):
        self._left -= 1


def test_control_pauses_and_resumes_by_use():
    node = FakeNode(stop_after=8)
    samples = iter([90, 90, 90, 10, 10, 10, 10, 10])
    asyncio.run(control(node, None, True, UseDetector(50, 2, 3), 0, cpu=lambda: next(samples)))
    assert node.calls == ["pause", "resume"]
