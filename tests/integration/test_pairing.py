"""Two real `swarmllm pair` processes, each with its own state folder (its own owner), meet through a
real bootstrap peer: with the right code both end trusting the other's owner; with a wrong code both
fail and nothing is trusted on either side."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from swarmllm.harness.local_swarm import LocalSwarm
from swarmllm.harness.processes import ManagedProcess
from swarmllm.owners import TrustStore, owner_key
from swarmllm.pairing import join_peer
from swarmllm.protocol.pairing import PairingError, derive_secrets, normalize_code
from swarmllm.swarm import BackgroundLoop, SwarmNode

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "swarmllm.cli"]


@pytest.fixture(scope="module")
def bootstrap(tmp_path_factory):
    swarm = LocalSwarm("smollm2-135m", [], log_dir=tmp_path_factory.mktemp("pairing"))
    swarm.start(timeout=60)
    try:
        yield swarm
    finally:
        swarm.stop()


def _env(home) -> dict:
    return {**os.environ, "SWARMLLM_HOME": str(home)}


def _trusted_ids(home) -> set[str]:
    with TrustStore(owner_key(home / "owner.key"), home / "trust.sqlite") as trust:
        assert trust.problems() == []
        return set(trust.trusted_owner_ids())


def _start_waiting(swarm: LocalSwarm, home, *args) -> ManagedProcess:
    waiting = ManagedProcess(f"pair-{home.name}", CLI + ["pair", "--initial-peers", ",".join(swarm.initial_peers),
                                                        "--host", "127.0.0.1", *args], home.parent / f"{home.name}.log")
    waiting.start(_env(home))
    swarm.wait_ready([waiting], 60)
    return waiting


def _exit_code(proc: ManagedProcess, timeout: float) -> int:
    try:
        return proc.process.wait(timeout)
    finally:
        proc.stop()


def test_two_machines_pair_and_each_trusts_the_other(bootstrap, tmp_path):
    ana, bo = tmp_path / "ana", tmp_path / "bo"
    waiting = _start_waiting(bootstrap, ana, "--label", "Ana")
    code = waiting.ready["code"]
    joined = subprocess.run(CLI + ["pair", code.lower(), "--initial-peers", ",".join(bootstrap.initial_peers),
                                   "--label", "Bo"], env=_env(bo), capture_output=True, text=True, timeout=120)
    assert joined.returncode == 0, joined.stderr
    assert _exit_code(waiting, 30) == 0, waiting.log_tail()
    ana_owner, bo_owner = owner_key(ana / "owner.key").owner_id, owner_key(bo / "owner.key").owner_id
    assert waiting.ready["owner_id"] == ana_owner
    assert f"paired with {ana_owner} (Ana)" in joined.stdout
    assert f"paired with {bo_owner} (Bo)" in waiting.log_tail()
    assert _trusted_ids(ana) == {bo_owner} and _trusted_ids(bo) == {ana_owner}
    listed = subprocess.run(CLI + ["trusted"], env=_env(ana), capture_output=True, text=True, timeout=60)
    assert bo_owner in listed.stdout and "Bo" in listed.stdout


def test_a_wrong_code_fails_on_both_sides_and_trusts_nothing(bootstrap, tmp_path):
    cy, dee = tmp_path / "cy", tmp_path / "dee"
    waiting = _start_waiting(bootstrap, cy, "--attempts", "2")
    code = normalize_code(waiting.ready["code"])
    wrong = code[:-1] + ("0" if code[-1] != "0" else "1")
    # A mistyped code leads nowhere: its rendezvous is another key.
    mistyped = subprocess.run(CLI + ["pair", wrong, "--initial-peers", ",".join(bootstrap.initial_peers),
                                     "--find-timeout", "3"], env=_env(dee), capture_output=True, text=True, timeout=120)
    assert mistyped.returncode == 2 and "no machine is waiting for this code" in mistyped.stderr, mistyped.stderr
    # A peer that found the waiting machine anyway (by watching the DHT) but guesses the code is refused twice,
    # after which the waiting side gives up.
    loop = BackgroundLoop("guesser")
    try:
        swarm = loop.run(SwarmNode.create(bootstrap.initial_peers, client_mode=True))
        with TrustStore(owner_key(dee / "owner.key"), dee / "trust.sqlite") as trust:
            for _ in range(2):
                with pytest.raises(PairingError, match="refused: wrong code"):
                    loop.run(join_peer(swarm, trust.owner, trust, derive_secrets(wrong), waiting.ready["peer_id"]),
                             timeout=60)
        loop.run(swarm.shutdown(), timeout=10)
    finally:
        loop.close()
    assert _exit_code(waiting, 30) == 2
    log = waiting.log_tail(40)
    assert "failed: wrong code (1 of 2 allowed)" in log and "2 pairing attempts failed" in log, log
    assert _trusted_ids(cy) == set() and _trusted_ids(dee) == set()
