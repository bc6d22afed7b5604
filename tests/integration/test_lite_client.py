"""The lite client (issue 13, point 6): generation with no weights on the client.

A real swarm of three nodes, [0, 15) twice and [15, 30); the client fetches the model's header from a
server over the swarm transport (a sparse local copy: a few MB of a 90 MB file), sends token ids,
which the first server embeds, and watches the tokens the ring's last server samples. The text
equals the single-process reference, in-process and through `swarmllm generate --lite`. A lite
client refuses what it cannot do (verification, speculation) with a sentence. When the chain's first
server is killed mid-generation, failover replays the client's token ids to the other one, and the
text is still the reference.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from swarmllm.client.generation import GenerationOptions, Generator, generate_text
from swarmllm.client.lite import LiteError, LiteHead
from swarmllm.client.swarm_client import SwarmClient
from swarmllm.engine.sampling import SamplingParams
from swarmllm.harness.local_swarm import LocalSwarm

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m"
PROMPT = "Name three rivers."
GREEDY = SamplingParams(max_new_tokens=8)


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    s = LocalSwarm(MODEL, [(0, 15), (15, 30), (0, 15)], log_dir=tmp_path_factory.mktemp("lite"))
    s.start(timeout=240)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def reference():
    return generate_text(MODEL, PROMPT, GREEDY)


def test_a_lite_client_generates_the_reference_with_no_weights(swarm, reference, tmp_path, monkeypatch):
    monkeypatch.setenv("SWARMLLM_CACHE", str(tmp_path))
    with SwarmClient.connect(swarm.initial_peers, keep_state=False) as client:
        generator = Generator.lite(MODEL, client)
        model = generator.model
        assert isinstance(model.head, LiteHead)
        header = os.stat(model.source.path)
        assert model.source.path.startswith(str(tmp_path))
        assert header.st_blocks * 512 < 16 * 2**20 < header.st_size  # only the header is on disk
        result = generator.generate(model.prompt_ids(PROMPT), GenerationOptions(sampling=GREEDY))
        assert result.decoding == "ring"
        assert result.token_ids == reference.token_ids
        with pytest.raises(LiteError, match="no --verify"):
            generator.generate(model.prompt_ids(PROMPT), GenerationOptions(sampling=GREEDY, verify="sample"))


@pytest.mark.extended  # the same path as in-process; join --client runs a lite gateway by default
def test_generate_lite_from_the_command_line(swarm, reference, tmp_path):
    out = subprocess.run([sys.executable, "-m", "swarmllm.cli", "generate", PROMPT, "--lite", "--initial-peers",
                          ",".join(swarm.initial_peers), "--max-new-tokens", "8", "--json"],
                         capture_output=True, text=True, timeout=180,
                         env={**swarm._env(), "SWARMLLM_CACHE": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["token_ids"] == reference.token_ids


def test_a_lite_client_survives_its_first_server_dying(swarm, reference, tmp_path, monkeypatch):
    monkeypatch.setenv("SWARMLLM_CACHE", str(tmp_path))
    with SwarmClient.connect(swarm.initial_peers, keep_state=False) as client:
        generator = Generator.lite(MODEL, client)
        with generator.start(generator.model.prompt_ids(PROMPT), GenerationOptions(sampling=GREEDY)) as run:
            first = run.session.chain[0].peer_id
            for index, _ in enumerate(run):
                if index == 2:  # a few tokens in: kill the server that embeds the token ids
                    victim = next(n for n in swarm.nodes if n.ready["peer_id"] == first)
                    swarm.kill(victim, signal.SIGKILL)
        result = run.result()
    assert result.token_ids == reference.token_ids
    assert first not in [hop.peer_id for hop in result.route] and result.failovers
