"""Nothing outlives the process that started it, and a node asked to stop stops.

- `swarmllm up` ended by SIGINT, SIGTERM, SIGHUP (its terminal closed) or SIGKILL leaves no
  bootstrap, node, gateway or p2pd behind: every descendant is gone within a few seconds.
- A node SIGKILLed on its own takes its p2pd with it.
- A node whose bootstrap and peers are dead still exits within 10 s of SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from swarmllm.harness.local_swarm import LocalSwarm, free_port

pytestmark = [pytest.mark.integration, pytest.mark.extended]  # the default suite is over its 20-minute line on CI: `pytest -m extended` runs it

MODEL = "smollm2-135m"
GONE_WITHIN = 20.0  # s: children shut down in parallel, each bounded (~9 s for a node; see server/node.py)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE  # an unreaped orphan is dead
    except psutil.NoSuchProcess:
        return False


def _wait_gone(pids, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if _alive(p)]
        if not left:
            return []
        time.sleep(0.2)
    return [p for p in pids if _alive(p)]


def _describe(pids) -> str:
    out = []
    for pid in pids:
        try:
            out.append(f"{pid}: {' '.join(psutil.Process(pid).cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return "\n".join(out)


def _kill_all(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# SIGKILL runs by default (nothing of `up` gets to clean up: the lifelines must); SIGHUP (the terminal
# closed), SIGINT and SIGTERM take the graceful path and run with `pytest -m extended`.
SIGNALS = [pytest.param(signal.SIGINT, marks=pytest.mark.extended),
           pytest.param(signal.SIGTERM, marks=pytest.mark.extended),
           pytest.param(signal.SIGHUP, marks=pytest.mark.extended), signal.SIGKILL]


@pytest.fixture(scope="module")
def ups(request, tmp_path_factory):
    """One `swarmllm up --nodes 1` per selected signal, all started at once (they start faster
    together than one after the other: most of a start is waiting on imports and readiness)."""
    selected = {item.callspec.params["sig"] for item in request.session.items
                if getattr(item, "originalname", "") == "test_up_leaves_no_orphans"}
    started = {}
    for sig in sorted(selected):
        folder = tmp_path_factory.mktemp(signal.Signals(sig).name)
        log = open(folder / "up.log", "w")
        started[sig] = (subprocess.Popen(
            [sys.executable, "-m", "swarmllm.cli", "up", "--nodes", "1", "--port", str(free_port()),
             "--log-dir", str(folder / "logs"), "--timeout", "240"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True), folder / "up.log")
        log.close()
    yield started
    for up, _ in started.values():  # whatever a failed test left
        if up.poll() is None:
            descendants = [p.pid for p in psutil.Process(up.pid).children(recursive=True)]
            _kill_all([up.pid, *descendants])


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_up_leaves_no_orphans(ups, sig):
    up, log = ups[sig]
    deadline = time.monotonic() + 300
    while "Press Ctrl-C" not in log.read_text():
        assert up.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "swarmllm up was not ready in time"
        time.sleep(0.5)
    descendants = [p.pid for p in psutil.Process(up.pid).children(recursive=True)]
    try:
        names = [psutil.Process(p).name() for p in descendants]
        assert names.count("p2pd") == 3, names  # bootstrap, the node, gateway: one daemon each

        os.kill(up.pid, sig)
        up.wait(GONE_WITHIN)
        left = _wait_gone(descendants, GONE_WITHIN)
        assert not left, f"still running after {signal.Signals(sig).name}:\n{_describe(left)}"
    finally:
        _kill_all([up.pid, *descendants])


def test_node_stops_within_seconds_without_its_peers_and_takes_p2pd_along(tmp_path):
    with LocalSwarm(MODEL, [(0, 15), (15, 30)], log_dir=tmp_path, node_args=("--throughput", "100")) as swarm:
        survivor, victim = swarm.nodes
        victim_p2pd = [p.pid for p in psutil.Process(victim.process.pid).children()]
        assert victim_p2pd, "the node has no p2pd child"

        os.kill(victim.process.pid, signal.SIGKILL)  # the node alone, not its process group
        assert not _wait_gone(victim_p2pd, 10), "p2pd outlived its SIGKILLed node"

        swarm.kill(swarm.bootstrap)  # bootstrap and its daemon: the survivor has no DHT peer left
        time.sleep(6)  # let it try (and fail) to announce to the dead peers at least once
        survivor_p2pd = [p.pid for p in psutil.Process(survivor.process.pid).children()]
        began = time.monotonic()
        survivor.signal(signal.SIGTERM)
        survivor.process.wait(30)
        took = time.monotonic() - began
        assert took < 10, f"the node took {took:.1f} s to exit after SIGTERM"
        assert survivor.process.returncode == 0, survivor.log_tail()
        assert not _wait_gone(survivor_p2pd, 5)
