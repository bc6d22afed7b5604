"""The one generation API: options are checked when made, results are typed, flags map onto ServerConfig."""

from __future__ import annotations

import json

import pytest

from swarmllm.cli import build_parser
from swarmllm.client.generation import GenerationOptions, Generator, PromptTooLongError, generate_text
from swarmllm.client.timeouts import StepTimeouts, fixed_timeout
from swarmllm.engine.sampling import SamplingParams
from swarmllm.server.node import ServerConfig


def test_options_refuse_what_does_not_combine():
    with pytest.raises(ValueError, match="do not combine"):
        GenerationOptions(ring=True, speculative="ngram")
    with pytest.raises(ValueError, match="draft_k must be 1..15"):
        GenerationOptions(speculative="ngram", draft_k=16)
    with pytest.raises(ValueError, match="unknown speculative mode"):
        GenerationOptions(speculative="magic")
    with pytest.raises(ValueError, match="unknown wire dtype"):
        GenerationOptions(wire_dtype="int3")
    assert GenerationOptions(ring=False, speculative="ngram").speculative == "ngram"


@pytest.fixture(scope="module")
def local():
    return Generator.local("smollm2-135m", "float32")


def test_local_generation_result_is_typed_and_streams_what_it_returns(local):
    ids = local.model.prompt_ids("Name a colour.")
    options = GenerationOptions(SamplingParams(max_new_tokens=6))
    deltas = []
    result = local.generate(ids, options, deltas.append)
    assert result.local and result.route == [] and result.route_text() == "local"
    assert result.decoding == "plain" and result.generated_tokens == 6 and "".join(deltas) == result.text
    assert result.prompt_tokens == len(ids) and result.timings.total_s >= result.timings.ttft_s > 0
    assert result.verification.mode == "off"
    as_json = json.loads(json.dumps(result.to_json()))
    assert as_json["token_ids"] == result.token_ids and as_json["timings"]["ttft_s"] > 0
    # The reference model's own loop gives the same tokens.
    assert local.model.generate(ids, options.sampling).token_ids == result.token_ids
    # Speculation changes the path, not the greedy tokens.
    spec = local.generate(ids, GenerationOptions(SamplingParams(max_new_tokens=6), speculative="ngram"))
    assert spec.decoding == "speculative" and spec.token_ids == result.token_ids and spec.speculation is not None


def test_a_generation_closed_early_keeps_what_it_produced(local):
    ids = local.model.prompt_ids("Count to ten.")
    with local.start(ids, GenerationOptions(SamplingParams(max_new_tokens=20))) as run:
        for i, _ in enumerate(run):
            if i == 2:
                break
    assert run.result().generated_tokens == 3


def test_ring_and_empty_prompts_are_refused_locally(local):
    with pytest.raises(ValueError, match="needs a swarm"):
        local.start([1, 2], GenerationOptions(ring=True))
    with pytest.raises(PromptTooLongError, match="empty"):
        local.start([], GenerationOptions())
    assert generate_text("smollm2-135m", "hi", SamplingParams(max_new_tokens=1)).generated_tokens == 1


def test_timeout_policy_adapts_to_measured_steps():
    policy = StepTimeouts()
    assert policy.step(1) == fixed_timeout(1)  # nothing measured yet
    for _ in range(3):
        policy.observe(0.05, 1)
    assert policy.step(1) == 1.5  # 8 x 50 ms is under the floor
    for _ in range(20):
        policy.observe(0.4, 1)
    assert 3.0 < policy.step(1) < fixed_timeout(1)
    policy.observe(30.0, 512)  # prefill steps do not count
    before = policy.step(1)
    policy.relax()
    assert policy.step(1) >= before and StepTimeouts(fixed=2.0).step(100) == 2.0


def test_serve_flags_map_onto_the_server_config():
    args = build_parser().parse_args([
        "serve", "--initial-peers", "/ip4/1.2.3.4/tcp/1", "--blocks", "2:7", "--cache-memory-mb", "64",
        "--batch-wait-ms", "3", "--no-ring", "--announce", "/ip4/5.6.7.8/tcp/9", "--max-length", "512",
        "--identity", "key", "--quant", "int4", "--kv-dtype", "int8", "--num-threads", "1", "--max-batch", "4"])
    config = ServerConfig.from_flags(vars(args))
    assert config.initial_peers == ("/ip4/1.2.3.4/tcp/1",) and config.blocks == (2, 7)
    assert config.cache_memory_bytes == 64 * 2**20 and config.batch_wait == 0.003 and not config.ring
    assert config.announce_addresses == ("/ip4/5.6.7.8/tcp/9",) and config.max_session_length == 512
    assert (config.identity_path, config.quant, config.kv_dtype) == ("key", "int4", "int8")
    assert (config.num_threads, config.max_batch) == (1, 4)
    defaults = ServerConfig.from_flags(vars(build_parser().parse_args(["serve", "--initial-peers", "x"])))
    assert defaults.ring and defaults.cache_memory_bytes == ServerConfig(model="m").cache_memory_bytes
