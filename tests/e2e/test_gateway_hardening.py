"""A hostile HTTP client against a real gateway in front of a real swarm (issue 11, point 6).

Each defence of the gateway is attacked for real: oversized chunked bodies, paths passed as
the model, one address filling its concurrency cap (while another is still served), spoofed
forwarding headers, missing and wrong API keys, and a non-streaming client that leaves mid-
generation (its session must be closed on the servers, not left to time out). Distinct client
addresses come from binding the client's side of the connection to 127.0.0.2, 127.0.0.3, ...
(the whole of 127/8 is loopback on Linux).
"""

from __future__ import annotations

import json
import os
import socket
import time

import httpx
import openai
import pytest

from swarmllm.harness.local_swarm import free_port

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m"
# Greedy counting goes on for hundreds of tokens: a generation that is sure to outlast the test's steps.
LONG = {"model": MODEL, "prompt": "1, 2, 3, 4, 5, 6, 7,", "max_tokens": 512, "temperature": 0}
SHORT = {"model": MODEL, "prompt": "Hi", "max_tokens": 2, "temperature": 0}
ALICE, BOB = "alice-key-0123456789abcdef", "bob-key-0123456789abcdefgh"


def _client(source: str = "127.0.0.1", **kwargs) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=120, **kwargs)


def _gateway(swarm, args, name):
    port = free_port()
    return swarm.add_gateway(port, ["--status-period", "1", *args], name=name), f"http://127.0.0.1:{port}"


def _wait(predicate, timeout: float, what: str, period: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(period)
    raise AssertionError(f"{what} did not happen within {timeout} s")


@pytest.fixture(scope="module")
def gateways(gateway_swarm, tmp_path_factory):
    """Two more gateways on the shared swarm, started together: `open` (no keys needed, one request
    in flight per client, 127.0.0.1 a trusted proxy) and `keyed` (API keys required)."""
    from tests.e2e.conftest import wait_for_model

    swarm, _ = gateway_swarm
    keys = tmp_path_factory.mktemp("keys") / "keys.yaml"
    keys.write_text(f"keys:\n  - {{name: alice, key: {ALICE}, requests_per_minute: 2}}\n"
                    f"  - {{name: bob, key: {BOB}, concurrency: 3}}\n")
    os.chmod(keys, 0o600)
    open_gateway, open_url = _gateway(swarm, ["--max-per-client", "1", "--trust-forwarded-for", "127.0.0.1/32",
                                              "--requests-per-minute", "1000"], "open-gateway")
    keyed_gateway, keyed_url = _gateway(swarm, ["--api-keys", str(keys)], "keyed-gateway")
    swarm.wait_ready([open_gateway, keyed_gateway], timeout=120)
    wait_for_model(open_url)
    wait_for_model(keyed_url)
    yield open_url, keyed_url
    open_gateway.stop()
    keyed_gateway.stop()


def test_chunked_oversized_body_is_413(gateway_swarm):
    _, url = gateway_swarm

    def body():  # 3 MB in 64 KiB chunks, no Content-Length: counted on the stream
        for _ in range(48):
            yield b"x" * 65536

    try:
        r = httpx.post(f"{url}/v1/chat/completions", content=body(), headers={"content-type": "application/json"},
                       timeout=120)
    except httpx.TransportError:
        pytest.fail("the gateway broke the connection instead of answering 413")
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    assert httpx.post(f"{url}/v1/completions", json=SHORT, timeout=120).status_code == 200  # and it serves on


@pytest.mark.parametrize("model", ["/etc/passwd", "../../models/x.gguf", "~/.cache/swarmllm/models/m.gguf",
                                   "installed-gguf", "qwen2.5-7b-instruct"])
def test_paths_and_unserved_models_are_404_with_the_usable_list(gateway_swarm, model):
    _, url = gateway_swarm
    if model == "installed-gguf":  # a real, readable GGUF file: still no path is opened
        from swarmllm.models.catalog import CATALOG

        model = CATALOG[MODEL].installed()
        assert model and model.endswith(".gguf") and os.path.isfile(model)
    r = httpx.post(f"{url}/v1/completions", json={**SHORT, "model": model}, timeout=60)
    assert r.status_code == 404, r.text
    error = r.json()["error"]
    assert error["code"] == "model_not_found" and f"models you can use: {MODEL}" in error["message"]


def test_forwarding_headers_are_ignored_without_trusted_proxies(gateway_swarm):
    _, url = gateway_swarm  # started without --trust-forwarded-for

    def remembered():
        return httpx.get(f"{url}/api/swarm", timeout=60).json()["gateway"]["clients_remembered"]

    unserved = {**SHORT, "model": "no-such-model"}  # charged to its client, then a cheap 404
    assert httpx.post(f"{url}/v1/completions", json=unserved, timeout=60).status_code == 404
    before = remembered()
    for headers in ({"X-Forwarded-For": "203.0.113.7"}, {"Forwarded": "for=203.0.113.8"},
                    {"X-Forwarded-For": "203.0.113.9, 198.51.100.3", "X-Real-IP": "203.0.113.10"}):
        assert httpx.post(f"{url}/v1/completions", json=unserved, headers=headers, timeout=60).status_code == 404
    assert remembered() == before  # every request was charged to 127.0.0.1, the real peer


def test_one_address_at_its_cap_is_refused_while_others_are_served(gateways):
    url, _ = gateways
    with _client("127.0.0.2") as hog, _client("127.0.0.2") as hog2, _client("127.0.0.3") as other, \
            _client("127.0.0.1") as proxy:
        with hog.stream("POST", f"{url}/v1/completions", json={**LONG, "stream": True}) as held:
            assert held.status_code == 200
            lines = held.iter_lines()  # kept: a dropped iterator would close the stream
            while not next(lines).startswith("data:"):  # it is generating
                pass
            busy = hog2.post(f"{url}/v1/completions", json=SHORT)
            assert busy.status_code == 429 and busy.json()["error"]["code"] == "too_many_concurrent_requests"
            assert int(busy.headers["retry-after"]) >= 1
            assert other.post(f"{url}/v1/completions", json=SHORT).status_code == 200
            # A spoofed forwarding header from an untrusted peer changes nothing ...
            spoofed = hog2.post(f"{url}/v1/completions", json=SHORT, headers={"X-Forwarded-For": "198.51.100.1"})
            assert spoofed.status_code == 429
            # ... while the trusted proxy's header is believed, in both directions.
            relayed = proxy.post(f"{url}/v1/completions", json=SHORT, headers={"X-Forwarded-For": "127.0.0.2"})
            assert relayed.status_code == 429
            relayed = proxy.post(f"{url}/v1/completions", json=SHORT,
                                 headers={"X-Forwarded-For": "127.0.0.2, 198.51.100.1"})
            assert relayed.status_code == 200
        # The stream was closed: its slot comes back.
        _wait(lambda: hog2.post(f"{url}/v1/completions", json=SHORT).status_code == 200, 15, "the slot's return",
              period=0.5)


def test_non_streaming_client_that_leaves_stops_its_generation(gateways):
    url, _ = gateways

    def gateway_stats():
        return httpx.get(f"{url}/api/swarm", timeout=60).json()

    def server_sessions():
        return sum(node["active_sessions"] for node in gateway_stats()["nodes"])

    _wait(lambda: server_sessions() == 0 and gateway_stats()["gateway"]["active"] == 0, 30, "an idle swarm")
    before = gateway_stats()["gateway"]
    body = json.dumps(LONG).encode()
    conn = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
    conn.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    # Wait until it generates and the servers' own records show its session (so that its end is observable too).
    _wait(lambda: gateway_stats()["gateway"]["tokens_generated"] > before["tokens_generated"], 30, "a first token")
    _wait(lambda: server_sessions() >= 1, 30, "the session in the servers' records")
    assert gateway_stats()["gateway"]["active"] == 1
    left = time.monotonic()
    conn.close()
    _wait(lambda: gateway_stats()["gateway"]["active"] == 0, 10, "the gateway giving its slot back")
    released = time.monotonic() - left
    stopped = gateway_stats()["gateway"]
    assert stopped["cancelled"] == before["cancelled"] + 1
    generated = stopped["tokens_generated"] - before["tokens_generated"]
    assert generated < LONG["max_tokens"], "the generation ran to its end"
    _wait(lambda: server_sessions() == 0, 20, "the servers closing the session")
    closed = time.monotonic() - left
    assert gateway_stats()["gateway"]["tokens_generated"] == stopped["tokens_generated"]
    print(f"\nnon-streaming disconnect: gateway released after {released:.2f} s, servers' records showed the session "
          f"closed after {closed:.2f} s, {generated} of {LONG['max_tokens']} tokens generated")


def test_api_keys(gateways):
    _, url = gateways
    missing = httpx.post(f"{url}/v1/completions", json=SHORT, timeout=60)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    wrong = httpx.post(f"{url}/v1/completions", json=SHORT, headers={"Authorization": f"Bearer {ALICE[:-1]}X"},
                       timeout=60)
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{url}/v1/models", timeout=60).status_code == 200  # the model list stays public
    alice = openai.OpenAI(base_url=f"{url}/v1", api_key=ALICE, max_retries=0, timeout=120)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="not-a-key", max_retries=0, timeout=60).completions.create(**SHORT)
    for _ in range(2):
        assert alice.completions.create(**SHORT).choices[0].text is not None
    with pytest.raises(openai.RateLimitError) as info:  # alice's own limit: 2 requests per minute
        alice.completions.create(**SHORT)
    assert "alice" in str(info.value)
    bob = openai.OpenAI(base_url=f"{url}/v1", api_key=BOB, max_retries=0, timeout=120)
    assert bob.completions.create(**SHORT).usage.completion_tokens >= 1  # keys are limited apart
