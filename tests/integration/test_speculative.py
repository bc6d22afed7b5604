"""Speculative decoding through a real 3-node swarm: greedy output equals plain decoding."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from swarmllm.client.generation import GenerationOptions, generate_text
from swarmllm.client.swarm_client import SwarmClient
from swarmllm.engine.sampling import SamplingParams

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m"
# The reply repeats the prompt's identifiers, so n-gram drafts get accepted, and rejected too.
PROMPT = ("Add a docstring to this function and return it unchanged otherwise:\n"
          "def total_price(item_prices, tax_rate):\n    subtotal = sum(item_prices)\n"
          "    return subtotal + subtotal * tax_rate\n")
GREEDY = SamplingParams(max_new_tokens=40)


@pytest.fixture(scope="module")
def client(swarm3):
    with SwarmClient.connect(swarm3.initial_peers) as c:
        yield c


@pytest.fixture(scope="module")
def plain(client):
    return generate_text(MODEL, PROMPT, GREEDY, client=client)


@pytest.mark.parametrize("mode", ["ngram", pytest.param("early-exit", marks=pytest.mark.extended)])
def test_speculative_greedy_through_the_swarm_equals_plain(client, plain, mode):
    result = generate_text(MODEL, PROMPT, GenerationOptions(sampling=GREEDY, speculative=mode), client=client)
    assert result.token_ids == plain.token_ids
    assert result.text == plain.text
    stats = result.speculation
    assert stats.rounds > 0
    assert stats.accepted < stats.drafted  # some drafts were rejected: the chain rolled back
    if mode == "ngram":  # and some accepted: fewer passes through the chain than tokens
        assert stats.accepted > 0 and stats.forward_steps < len(plain.token_ids)


def test_speculative_local_equals_swarm(plain):
    local = generate_text(MODEL, PROMPT, GenerationOptions(sampling=GREEDY, speculative="ngram", draft_k=4))
    assert local.token_ids == plain.token_ids and local.route_text() == "local"


@pytest.mark.extended  # the CLI path of what the tests above check through the API
def test_cli_generate_speculative(swarm3, plain):
    out = subprocess.run([sys.executable, "-m", "swarmllm.cli", "generate", "--model", MODEL, "--initial-peers",
                          ",".join(swarm3.initial_peers), "--max-new-tokens", "40", "--speculative", "ngram",
                          "--draft-k", "6", "--json", PROMPT], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["token_ids"] == plain.token_ids and result["speculation"]["rounds"] > 0
    bad = subprocess.run([sys.executable, "-m", "swarmllm.cli", "generate", "--local", "--speculative", "ngram",
                          "--draft-k", "40", "x"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--draft-k must be 1..15" in bad.stderr
