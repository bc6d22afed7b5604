"""`swarmllm volunteer` (issue 15, points 1-2) in a real swarm: it reads the swarm and plans the blocks
nobody serves, serves them, pauses (drained, announced LEAVING) while another program uses the CPU,
resumes when it stops, and leaves on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from swarmllm.harness.local_swarm import LocalSwarm
from swarmllm.harness.processes import ManagedProcess

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    # node0 announces a low speed, so that the volunteer's span (sized by its speed measured against the
    # announced ones) always reaches the uncovered end, however loaded the machine is while it measures
    s = LocalSwarm(MODEL, [(0, 15)], node_args=("--throughput", "1"), log_dir=tmp_path_factory.mktemp("volunteer"))
    s.start(timeout=240)
    try:
        yield s
    finally:
        s.stop()


def _cli(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "swarmllm.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def _generate(swarm):
    return _cli("generate", "Hi", "--initial-peers", ",".join(swarm.initial_peers), "--no-lan",
                "--max-new-tokens", "3", timeout=120)


def _wait_for(proc: ManagedProcess, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in proc.log_path.read_text():
        if time.monotonic() > deadline or not proc.alive:
            pytest.fail(f"no {text!r} in the volunteer's log:\n{proc.log_tail(30)}")
        time.sleep(0.5)


def test_dry_run_reads_the_swarm_and_plans_the_missing_blocks(swarm):
    out = _cli("volunteer", "--initial-peers", ",".join(swarm.initial_peers), "--no-lan", "--dry-run", "--json",
               "--max-memory", "2GB", "--threads", "1")
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert found["machine"]["logical_cores"] >= 1 and found["machine"]["memory_bytes"] > 0
    smol = next(row for row in found["coverage"] if row["model"] == MODEL)
    assert smol["servers_per_block"] == [1] * 15 + [0] * 15 and not smol["covered"]
    plan = found["plan"]
    # half served beats not served at all: completing smollm2 gives users a chain
    assert plan["model_id"] == MODEL and plan["start"] <= 15 and plan["end"] == 30  # every block nobody serves
    assert plan["memory_bytes"] <= 2 * 10**9 and plan["threads"] == 1 and plan["tokens_per_second"] > 0
    assert found["would_run"][:2] == ["swarmllm", "serve"] and "--max-memory" in found["would_run"]


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores: 170% of one core must mean 'in use'")
def test_serves_pauses_while_the_machine_is_busy_resumes_and_leaves(swarm):
    # Blocks 15-30 are served by nobody yet (the dry run above plans them): the volunteer's are the only ones.
    volunteer = ManagedProcess("volunteer", [
        sys.executable, "-m", "swarmllm.cli", "volunteer", "--initial-peers", ",".join(swarm.initial_peers),
        "--no-lan", "--host", "127.0.0.1", "--threads", "1", "--max-memory", "2GB", "--when-idle",
        "--busy-cpu", "170", "--idle-check", "1", "--status-port", "0", "--identity", str(swarm.identity_path("volunteer"))],
        swarm.log_dir / "volunteer.log")
    volunteer.start(swarm._env())
    swarm.nodes.append(volunteer)  # stopped with the swarm
    swarm.wait_ready([volunteer], timeout=240)
    assert volunteer.ready["start"] <= 15 and volunteer.ready["end"] == 30, volunteer.ready
    served = _generate(swarm)
    assert served.returncode == 0, served.stderr

    # Unmistakable use: every core busy (the swarm's own processes, e.g. a generate, stay well below 170%).
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(max(3, os.cpu_count()))]
    try:
        _wait_for(volunteer, "pausing: the machine is in use", 60)
        time.sleep(2)  # the LEAVING record is stored within a second of the pause
        refused = _generate(swarm)
        assert refused.returncode != 0 and "Traceback" not in refused.stderr, refused.stderr
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    _wait_for(volunteer, "resuming", 60)
    time.sleep(2)
    again = _generate(swarm)
    assert again.returncode == 0, again.stderr

    volunteer.signal(signal.SIGTERM)
    volunteer.finish(time.monotonic() + 30)
    assert volunteer.process.returncode == 0, volunteer.log_tail(30)
    assert "left the swarm" in volunteer.log_path.read_text()
