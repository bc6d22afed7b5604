"""LAN discovery over a real (emulated) LAN: network namespaces on one bridge (harness/lan_bridge.py).

Machine a runs `swarmllm bootstrap` with no --initial-peers: the LAN is empty, so it starts a
swarm and advertises it. Machine c runs a liar (lan_liar.py) advertising broken and misleading
services. Machine b finds a's swarm among them by mDNS, then runs `swarmllm serve` with no
--initial-peers, which must join a's swarm: its record is read through a's address. Once b
stops, the LAN forgets it. A `generate` with no flags joins the same swarm; on a LAN with no
swarm, `generate` and `gateway` stop with a sentence. No route, no mock: multicast goes over the bridge as on a switch.

Needs root and iproute2 (skipped otherwise, with the reason). Every namespace is deleted at
the end, and every process stopped first.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from swarmllm.harness.lan_bridge import LanBridge, unavailable
from swarmllm.harness.processes import ManagedProcess

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m"
LIAR = str(Path(__file__).with_name("lan_liar.py"))


@pytest.fixture
def lan():
    reason = unavailable()
    if reason is not None:
        pytest.skip(f"LAN discovery runs on network namespaces: {reason}")
    bridge = LanBridge.create(["a", "b", "c"])
    try:
        yield bridge
    finally:
        bridge.remove()


@pytest.fixture
def processes(lan):
    """Processes started in the LAN's machines; all stopped before the namespaces go."""
    started: list[ManagedProcess] = []
    yield started
    for proc in started:
        proc.terminate()
    deadline = time.monotonic() + 12
    for proc in started:
        proc.finish(deadline)


def start(lan: LanBridge, processes: list, machine: str, name: str, argv: list[str], log_dir: Path,
          timeout: float = 120) -> ManagedProcess:
    import os

    proc = ManagedProcess(name, lan.command(machine, argv), log_dir / f"{name}.log")
    proc.start(dict(os.environ))
    processes.append(proc)
    deadline = time.monotonic() + timeout
    while proc.poll_ready() is None:
        assert proc.alive, f"{name} exited before it was ready:\n{proc.log_tail()}"
        assert time.monotonic() < deadline, f"{name} was not ready after {timeout} s:\n{proc.log_tail()}"
        time.sleep(0.1)
    return proc


def probe(lan: LanBridge, machine: str, *args: str, timeout: float = 60) -> dict:
    out = subprocess.run(lan.command(machine, [sys.executable, "-m", "swarmllm.harness.lan_probe", *args]),
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "swarmllm.cli", *args]


def test_serve_with_no_flags_joins_the_swarm_found_on_the_lan(lan, processes, tmp_path):
    # a: an empty LAN, so a new swarm, advertised.
    a = start(lan, processes, "a", "bootstrap-a",
              cli("bootstrap", "--port", "0", "--lan-timeout", "1", "--identity", str(tmp_path / "a.key")), tmp_path)
    a_id = a.ready["peer_id"]
    a_lan = [x for x in a.ready["addresses"] if f"/ip4/{lan.address('a')}/" in x]
    assert a_lan, a.ready
    assert "no swarm 'default' on the local network: starting a new one" in a.log_tail()

    # c: a liar, heard by everyone (its valid "elsewhere" peer shows it was), believed by no one.
    start(lan, processes, "c", "liar", [sys.executable, LIAR, lan.address("c"), a_id], tmp_path, timeout=30)
    # Seven services answer, each in its own packets: on a loaded machine they arrive over a few seconds.
    found = probe(lan, "b", "discover", "--any", "--timeout", "8", "--settle", "3")
    seen = {(p["peer_id"], p["swarm_name"], p["role"], tuple(p["addresses"])) for p in found["peers"]}
    impostor = f"/ip4/{lan.address('a').rsplit('.', 1)[0]}.99/tcp/9/p2p/{a_id}"
    liar_id = "12D3KooWBLnZLh6ZYb4Gq9b73zyunFaSwkFU2NNRGk45HkB6FtSh"
    assert seen == {(a_id, "default", "bootstrap", tuple(a_lan)),
                    (a_id, "default", "bootstrap", (impostor,)),        # a hint, dialed and refused
                    (liar_id, "elsewhere", "server", (f"/ip4/{lan.address('c')}/tcp/4001/p2p/{liar_id}",))}, found
    assert set(found["addresses"]) == {*a_lan, impostor}

    # b: `serve` with no peers finds a (past the liar) and joins its swarm, not a new one.
    b = start(lan, processes, "b", "serve-b",
              cli("serve", "--model", MODEL, "--blocks", "0:2", "--throughput", "50", "--num-threads", "1",
                  "--identity", str(tmp_path / "b.key"), "--lan-timeout", "5"), tmp_path)
    assert re.search(r"found swarm 'default' on the local network in [0-9.]+ s: joining through", b.log_tail(50))
    assert a_lan[0] in b.log_tail(50)
    # Meanwhile a client with no flags (on c, beside the liar) joins too: it sees b's blocks and what is missing.
    generate = subprocess.Popen(lan.command("c", cli("generate", "--model", MODEL, "--lan-timeout", "5", "hi")),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    record = probe(lan, "a", "record", "--initial-peers", a_lan[0], "--model", MODEL, "--block", "0",
                   "--peer", b.ready["peer_id"], "--timeout", "20")
    assert record["found"], f"b's record is not in a's swarm:\n{b.log_tail()}"
    _, errors = generate.communicate(timeout=120)
    assert generate.returncode == 2 and "no online server hosts blocks [2, 30)" in errors, errors

    # b advertises itself too; once stopped it is gone from the LAN, a stays.
    now = probe(lan, "c", "discover", "--timeout", "2", "--settle", "1")
    assert {p["peer_id"] for p in now["peers"]} >= {a_id, b.ready["peer_id"]}
    b.stop()
    after = probe(lan, "c", "discover", "--timeout", "2", "--settle", "1")
    assert a_id in {p["peer_id"] for p in after["peers"]}
    assert b.ready["peer_id"] not in {p["peer_id"] for p in after["peers"]}


def test_clients_on_a_lan_with_no_swarm_say_how_to_find_one(lan):
    for command in (["generate", "hi"], ["gateway"]):
        out = subprocess.run(lan.command("a", cli(*command, "--lan-timeout", "1")), capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 2, out.stderr
        assert out.stderr.strip().splitlines() == [
            f"swarmllm {command[0]}: error: no swarm 'default' was found on the local network within 1 s. Pass "
            "--initial-peers MADDR (what `swarmllm bootstrap` or `swarmllm up` prints, or what an invite holds), "
            "start one on this network with `swarmllm up` or `swarmllm serve`, or wait longer with --lan-timeout"]


@pytest.mark.extended  # the benchmark in its tiny setting (~25 s); the tests above cover the same paths
def test_lan_benchmark_quick(tmp_path):
    if unavailable() is not None:
        pytest.skip(f"LAN discovery runs on network namespaces: {unavailable()}")
    bench = Path(__file__).resolve().parents[2] / "benchmarks" / "lan_discovery.py"
    out = subprocess.run([sys.executable, str(bench), "--quick", "--out", str(tmp_path)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    result = json.loads((tmp_path / "lan_discovery.json").read_text())
    assert result["discovery"]["runs"] == 3 and 0 < result["discovery"]["median_s"] < 5
    assert result["serve_no_flags_to_ready"]["runs"] == 1
    assert "| discovery: start to the swarm's address" in (tmp_path / "lan_discovery.md").read_text()
