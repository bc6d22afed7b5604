"""A node behind a home router serves its blocks through a relay (issue 13, point 1).

The lab (harness/netns.py, real network namespaces, nftables NAT): the bootstrap peer (a relay),
server A [0, 15) and the client, each a machine of its own on the public segment; server H [15, 30) at home, behind a router that
masquerades its traffic and drops every inbound connection. H's reachability probe hears "no"
from the bootstrap and a lying "yes" from a hostile public peer (reach_liar.py); a tie is private,
so it reserves a slot at the bootstrap and announces a /p2p-circuit address (a liar cannot talk a
home node into announcing addresses nobody can dial).
The client generates through A -> H: H's direct
address is unroutable from there, so every byte to H crosses the relay; the text must equal the
single-process reference. Ring decoding (H samples and sends the token to A) and the plain chain
both run: A pushes to H through the circuit, H dials A directly (outbound is allowed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from swarmllm.client.generation import generate_text
from swarmllm.engine.sampling import SamplingParams
from swarmllm.harness import netns
from swarmllm.harness.local_swarm import wait_ready
from swarmllm.harness.processes import ManagedProcess

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m"
PROMPT = "Name three rivers."
TOKENS = 8

usable, why = netns.available()
if not usable:
    pytest.skip(f"NAT lab unavailable: {why}", allow_module_level=True)


@pytest.fixture(scope="module")
def lab():
    with netns.NatLab(f"swn{os.getpid() % 10000}", homes=1) as lab:
        yield lab


@pytest.fixture(scope="module")
def nat_swarm(lab, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("nat")
    env = {**os.environ, "SWARMLLM_HOME": str(log_dir / "home"), "OMP_NUM_THREADS": "1"}
    boot_ns, boot_host = lab.add_public_host()
    bootstrap = lab.start(boot_ns, "bootstrap", log_dir, env, "bootstrap", "--host", boot_host,
                       "--port", "31337", "--identity", str(log_dir / "bootstrap.key"))
    processes = [bootstrap]
    try:
        wait_ready([bootstrap], 60)
        boot = bootstrap.ready
        peers = ",".join(a for a in boot["addresses"] if boot_host in a)
        liar_ns, liar_host = lab.add_public_host()
        liar = ManagedProcess("reach-liar", [*lab.exec(liar_ns), sys.executable, str(Path(__file__).with_name(
            "reach_liar.py")), "--host", liar_host, "--initial-peers", peers, "--answer", "yes"], log_dir / "liar.log")
        liar.start(env)
        processes.append(liar)
        wait_ready([liar], 60)
        a_ns, a_host = lab.add_public_host()
        client_ns, _ = lab.add_public_host()
        common = ["--initial-peers", peers, "--num-threads", "1", "--rebalance-period", "0"]
        server_a = lab.start(a_ns, "server-a", log_dir, env, "serve", "--model", MODEL, "--blocks", "0:15",
                          "--host", a_host, "--identity", str(log_dir / "a.key"), *common)
        # H asks the bootstrap (honest: no) and the liar (yes) to dial it back; only the bootstrap relays
        server_h = lab.start(lab.home(1), "server-h", log_dir, env, "serve", "--model", MODEL, "--blocks", "15:30",
                             "--host", lab.home_address(1), "--identity", str(log_dir / "h.key"), *common[2:],
                             "--initial-peers", f"{peers},{liar.ready['addresses'][0]}", "--relays", peers)
        processes += [server_a, server_h]
        wait_ready([server_a, server_h], 240)
        a, h = server_a.ready, server_h.ready
        yield {"peers": peers, "a": a, "h": h, "env": env, "log_dir": log_dir, "client_ns": client_ns}
    finally:
        for proc in reversed(processes):
            proc.stop()


def _generate(lab, swarm, *extra: str) -> dict:
    result = subprocess.run(lab.cli(swarm["client_ns"], "generate", PROMPT, "--model", MODEL, "--initial-peers",
                                 swarm["peers"], "--max-new-tokens", str(TOKENS), "--json", *extra),
                            capture_output=True, text=True, timeout=240, env=swarm["env"])
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_the_home_node_knows_it_is_behind_nat_and_announces_a_relay_circuit(nat_swarm):
    a, h = nat_swarm["a"], nat_swarm["h"]
    assert a["reachability"] == "public" and not a["relayed"]
    assert h["reachability"] == "private" and h["relayed"]
    assert sorted(h["probe_answers"]) == [False, True]  # the bootstrap's honest no, the liar's yes: a tie
    assert "/p2p-circuit/p2p/" + h["peer_id"] in h["addresses"][0]


@pytest.mark.parametrize("ring", ["--ring", pytest.param("--no-ring", marks=pytest.mark.extended)])
def test_a_client_generates_through_the_relayed_node_exactly(lab, nat_swarm, ring):
    reference = generate_text(MODEL, PROMPT, SamplingParams(max_new_tokens=TOKENS))
    out = _generate(lab, nat_swarm, ring)
    assert out["token_ids"] == reference.token_ids
    assert [hop["peer_id"] for hop in out["route"]] == [nat_swarm["a"]["peer_id"], nat_swarm["h"]["peer_id"]]
    assert out["paths"] == {nat_swarm["a"]["peer_id"]: "direct", nat_swarm["h"]["peer_id"]: "relayed"}
    assert out["decoding"] == ("ring" if ring == "--ring" else "plain")
