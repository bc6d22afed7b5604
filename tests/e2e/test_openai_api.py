"""The gateway through the official `openai` package and raw HTTP, against a real swarm."""

from __future__ import annotations

import concurrent.futures

import httpx
import openai
import pytest

from swarmllm.client.generation import ClientModel, GenerationOptions, Generator, generate_text, sampling_options
from swarmllm.client.swarm_client import SwarmClient
from swarmllm.engine.sampling import SamplingParams
from swarmllm.harness.local_swarm import free_port

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m"
QUESTION = "Name three colours of the rainbow."


@pytest.fixture(scope="module")
def api(gateway_swarm):
    _, url = gateway_swarm
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


# What a request with temperature 0 and nothing else gets: greedy with the model's recommended penalty
# (catalog.py: repetition_penalty 1.1 for smollm2-135m). The greedy tests below check that it was applied.
RECOMMENDED_GREEDY = SamplingParams(**sampling_options({"temperature": 0}, MODEL), max_new_tokens=24)


@pytest.fixture(scope="module")
def reference(gateway_swarm):
    """Greedy reply computed directly through the swarm, without the gateway."""
    assert RECOMMENDED_GREEDY.repetition_penalty == 1.1
    swarm, _ = gateway_swarm
    with SwarmClient.connect(swarm.initial_peers) as client:
        return generate_text(MODEL, QUESTION, RECOMMENDED_GREEDY, client=client)


def test_models_lists_the_served_model(api):
    assert [m.id for m in api.models.list().data] == [MODEL]


def test_chat_non_streaming_equals_swarm_reference(api, reference):
    reply = api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}],
                                        max_tokens=24, temperature=0)
    assert reply.choices[0].message.content == reference.text
    assert reply.choices[0].finish_reason == reference.finish_reason
    assert reply.usage.completion_tokens == reference.generated_tokens
    assert reply.usage.prompt_tokens == reference.prompt_tokens
    route = reply.model_extra["swarmllm"]["route"]
    assert [(hop["start"], hop["end"]) for hop in route] == [(0, 10), (10, 20), (20, 30)]
    assert reply.model_extra["swarmllm"]["ring"]  # the gateway's default: the last server samples


def test_chat_streaming_equals_swarm_reference(api, reference):
    stream = api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}],
                                         max_tokens=24, temperature=0, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reference.text
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3  # really streamed
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_completions_endpoint_and_stop_strings(api):
    reply = api.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=16, temperature=0, stop=[" 7"])
    text = reply.choices[0].text
    assert " 7" not in text and reply.choices[0].finish_reason in ("stop", "length")


def test_unknown_model_is_404(api):
    with pytest.raises(openai.NotFoundError) as info:
        api.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert "no-such-model" in str(info.value)


@pytest.mark.parametrize("body, status", [
    (b"{not json", 400),
    (b'{"model": "smollm2-135m", "messages": "hello"}', 400),
    (b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": "x"}], "max_tokens": "many"}', 400),
    (b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": "x"}], "temperature": 9}', 400),
    (b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 100000}', 400),
    (b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": "x"}], "n": 9}', 400),
    (b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}', 400),
    (b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": "x"}], "frequency_penalty": 3}', 400),
    (b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": "x"}], "min_p": 1}', 400),
])
def test_bad_requests_get_openai_errors(gateway_swarm, body, status):
    _, url = gateway_swarm
    r = httpx.post(f"{url}/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status
    assert r.json()["error"]["message"]


def test_content_type_missing_is_json_and_another_is_refused_with_what_to_send(gateway_swarm):
    _, url = gateway_swarm
    body = b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, ' \
           b'"an_unknown_field": {"ignored": true}}'
    r = httpx.post(f"{url}/v1/chat/completions", content=body, headers={"content-type": ""})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] is not None, r.text
    r = httpx.post(f"{url}/v1/chat/completions", content=body, headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "send Content-Type: application/json" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/v1/chat/completionz", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 404 and r.json()["error"]["message"]  # unknown routes too: OpenAI's error shape
    r = httpx.get(f"{url}/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["message"]


def test_oversized_body_is_413(gateway_swarm):
    _, url = gateway_swarm
    r = httpx.post(f"{url}/v1/chat/completions", content=b"x" * 2_000_000, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def test_rate_limited_client_gets_429(gateway_swarm):
    swarm, _ = gateway_swarm
    port = free_port()
    gateway = swarm.add_gateway(port, ["--requests-per-minute", "2"], name="strict-gateway")
    swarm.wait_ready([gateway])
    api = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    for _ in range(2):
        api.completions.create(model=MODEL, prompt="Hi", max_tokens=2)
    with pytest.raises(openai.RateLimitError) as info:
        api.completions.create(model=MODEL, prompt="Hi", max_tokens=2)
    assert int(info.value.response.headers["retry-after"]) >= 1
    gateway.stop()


def test_saturated_gateway_answers_503_not_a_pile_up(gateway_swarm):
    swarm, _ = gateway_swarm
    port = free_port()
    gateway = swarm.add_gateway(port, ["--max-active", "1", "--max-queue", "0"], name="tiny-gateway")
    swarm.wait_ready([gateway])
    url = f"http://127.0.0.1:{port}/v1/completions"
    body = {"model": MODEL, "prompt": "Tell me a long story.", "max_tokens": 48, "temperature": 0}
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        statuses = sorted(pool.map(lambda _: httpx.post(url, json=body, timeout=120).status_code, range(3)))
    assert statuses[0] == 200 and 503 in statuses
    gateway.stop()


@pytest.fixture(scope="module")
def plain_api(gateway_swarm):
    """A second gateway on the same swarm, decoding the plain way (the first one rings: the default)."""
    from tests.e2e.conftest import wait_for_model

    swarm, _ = gateway_swarm
    port = free_port()
    swarm.wait_ready([swarm.add_gateway(port, ["--no-ring", "--requests-per-minute", "1000"], name="plain-gateway")],
                     timeout=120)
    wait_for_model(f"http://127.0.0.1:{port}")
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.mark.extended  # a second gateway (~14 s); ring decoding == plain is in test_swarm's default cases
def test_ring_gateway_streams_the_same_reply(api, plain_api, reference):
    ring_api, api = api, plain_api  # the default gateway rings; compare it with a plain one
    stream = ring_api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}],
                                              max_tokens=24, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == reference.text
    # Sampling with a seed: the ring's server-side sampler draws what the gateway's own would.
    ask = dict(model=MODEL, messages=[{"role": "user", "content": QUESTION}], max_tokens=20, temperature=0.9,
               top_p=0.9, seed=31)
    assert ring_api.chat.completions.create(**ask).choices[0].message.content == \
        api.chat.completions.create(**ask).choices[0].message.content
    # A stop string ends the ring early (RingStop); the next request on the same servers is unaffected.
    stopped = ring_api.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=16, temperature=0, stop=[" 7"])
    plain = api.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=16, temperature=0, stop=[" 7"])
    assert stopped.choices[0].text == plain.choices[0].text
    again = ring_api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}],
                                             max_tokens=24, temperature=0)
    assert again.choices[0].message.content == reference.text


def test_the_verify_extension_field(gateway_swarm, reference):
    """`verify` rides in the request (our extension); the reply says what was checked. This swarm has one
    server per span: sample (the gateway's default) goes on and names the spans it could not check, strict
    is refused before any token with a 400 naming the span."""
    _, url = gateway_swarm
    body = {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 24, "temperature": 0}
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120).json()
    assert reply["choices"][0]["message"]["content"] == reference.text
    verification = reply["swarmllm"]["verification"]
    assert verification["mode"] == "sample" and verification["mismatches"] == 0 and verification["banned"] == []
    assert len(verification["unverifiable"]) == 3
    strict = httpx.post(f"{url}/v1/chat/completions", json={**body, "verify": "strict"}, timeout=120)
    assert strict.status_code == 400, strict.text
    error = strict.json()["error"]
    assert error["code"] == "verification_unavailable" and "second server for blocks [" in error["message"]
    off = httpx.post(f"{url}/v1/chat/completions", json={**body, "verify": "off"}, timeout=120).json()
    assert off["swarmllm"]["verification"]["mode"] == "off"
    bad = httpx.post(f"{url}/v1/chat/completions", json={**body, "verify": "sometimes"}, timeout=30)
    assert bad.status_code in (400, 422)


def test_logprobs_n_include_usage_and_user(api, gateway_swarm):
    """OpenAI's logprobs / top_logprobs, n > 1 (seed, seed + 1, ...), stream_options.include_usage and user."""
    ask = dict(model=MODEL, messages=[{"role": "user", "content": QUESTION}], max_tokens=12, temperature=0.8, seed=5)
    reply = api.chat.completions.create(**ask, n=3, logprobs=True, top_logprobs=3, user="tester-1")
    assert [c.index for c in reply.choices] == [0, 1, 2]
    texts = [c.message.content for c in reply.choices]
    assert len(set(texts)) > 1  # different seeds
    assert reply.usage.completion_tokens == sum(len(c.logprobs.content) for c in reply.choices)
    for choice in reply.choices:
        entries = choice.logprobs.content
        assert "".join(e.token for e in entries).strip() == choice.message.content.strip()
        for e in entries:
            assert e.logprob <= 0 and len(e.top_logprobs) == 3
            assert e.top_logprobs[0].logprob >= e.top_logprobs[-1].logprob
            assert e.logprob <= e.top_logprobs[0].logprob + 1e-6
            assert bytes(e.bytes).decode("utf-8", "replace") == e.token
    # choice 1 is what a request with seed + 1 gets alone; the log-probabilities are those of the model
    alone = api.chat.completions.create(**{**ask, "seed": 6})
    assert alone.choices[0].message.content == texts[1]
    swarm, _ = gateway_swarm
    with SwarmClient.connect(swarm.initial_peers) as client:
        sampling = SamplingParams(**sampling_options({"temperature": 0.8}, MODEL), seed=5, max_new_tokens=12)
        local = generate_text(MODEL, QUESTION, GenerationOptions(sampling=sampling, logprobs=3), client=client)
    assert local.text == texts[0]

    stream = api.chat.completions.create(**ask, n=2, stream=True, stream_options={"include_usage": True},
                                         logprobs=True)
    chunks = list(stream)
    streamed = {0: "", 1: ""}
    tokens = {0: 0, 1: 0}
    for c in chunks:
        for choice in c.choices:
            streamed[choice.index] += choice.delta.content or ""
            tokens[choice.index] += len(choice.logprobs.content) if choice.logprobs else 0
    assert streamed[0] == texts[0] and streamed[1] == texts[1]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == tokens[0] + tokens[1]

    legacy = api.completions.create(model=MODEL, prompt="The sky is", max_tokens=6, temperature=0, logprobs=2)
    lp = legacy.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert all(len(alternatives) <= 2 for alternatives in lp.top_logprobs)


def test_penalties_and_recommended_defaults_through_the_api(api, gateway_swarm):
    """OpenAI's penalties and the llama.cpp extensions reach the sampler: the reply equals the swarm client's with
    the same options; a request that sets nothing gets the catalog's recommendation, not temperature 1."""
    swarm, _ = gateway_swarm
    extra = {"top_k": 40, "min_p": 0.05, "repeat_penalty": 1.3, "repeat_last_n": 32}  # llama.cpp's names too
    ask = dict(model=MODEL, messages=[{"role": "user", "content": "Write a haiku about the sea."}], max_tokens=40,
               temperature=0.7, seed=3, frequency_penalty=0.5, presence_penalty=0.4)
    reply = api.chat.completions.create(**ask, extra_body=extra)
    sampling = SamplingParams(temperature=0.7, top_p=0.9, seed=3, frequency_penalty=0.5, presence_penalty=0.4, top_k=40,
                              min_p=0.05, repetition_penalty=1.3, penalty_last_n=32, max_new_tokens=40)
    with SwarmClient.connect(swarm.initial_peers) as client:
        generator = Generator.swarm(ClientModel.load(MODEL), client)
        ids = generator.model.chat_ids(ask["messages"])
        expected = generator.generate(ids, GenerationOptions(sampling=sampling))
    assert reply.choices[0].message.content == expected.text
    assert reply.model_extra["swarmllm"]["ring"]  # the ring carried the penalties
    bare = api.chat.completions.create(model=MODEL, messages=ask["messages"], max_tokens=40, seed=3)
    recommended = SamplingParams(**sampling_options({}, MODEL), seed=3, max_new_tokens=40)
    assert recommended.temperature == 0.2
    with SwarmClient.connect(swarm.initial_peers) as client:
        generator = Generator.swarm(ClientModel.load(MODEL), client)
        assert bare.choices[0].message.content == generator.generate(ids, GenerationOptions(sampling=recommended)).text
