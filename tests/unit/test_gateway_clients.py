"""Who is asking (gateway/clients.py), API key files (gateway/api_keys.py) and the body limit
middleware (gateway/body_limit.py), each alone."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from swarmllm.gateway.api_keys import ApiKeyFileError, ApiKeys, bearer_token
from swarmllm.gateway.body_limit import BodyLimit
from swarmllm.gateway.clients import (
    address_key, client_address, forwarded_chain, parse_address, parse_networks,
)
from swarmllm.gateway.limits import Limits

PROXIES = parse_networks("10.0.0.0/8, 2001:db8:ffff::/48")


@pytest.mark.parametrize("text, expected", [
    ("1.2.3.4", "1.2.3.4"), (" 1.2.3.4:8080 ", "1.2.3.4"), ("[2001:db8::1]:443", "2001:db8::1"),
    ("2001:db8::1", "2001:db8::1"), ('"[::ffff:1.2.3.4]"', "1.2.3.4"), ("unknown", None), ("_hidden", None),
    ("", None), ("1.2.3.4.5", None), ("[::1", None),
])
def test_parse_address(text, expected):
    address = parse_address(text)
    assert (str(address) if address else None) == expected


def test_bad_networks_are_one_sentence():
    with pytest.raises(ValueError, match="not an IP network"):
        parse_networks("10.0.0.0/8,proxy.example")


def test_headers_from_an_untrusted_peer_change_nothing():
    assert client_address("203.0.113.9", ["1.1.1.1"], PROXIES) == "203.0.113.9"
    assert client_address("203.0.113.9", ["1.1.1.1"], ()) == "203.0.113.9"
    assert client_address(None, ["1.1.1.1"], PROXIES) == "unknown"


def test_a_trusted_proxy_names_the_right_most_untrusted_address():
    # The client wrote "6.6.6.6" itself; its proxy appended its real address; a second proxy the next hop.
    chain = forwarded_chain("x-forwarded-for", ["6.6.6.6, 198.51.100.7", "10.1.1.1"])
    assert client_address("10.2.2.2", chain, PROXIES) == "198.51.100.7"
    assert client_address("10.2.2.2", [], PROXIES) == "10.2.2.2"  # no header: the proxy itself
    assert client_address("10.2.2.2", ["garbage", "10.1.1.1"], PROXIES) == "10.1.1.1"  # stops at what parses
    assert client_address("10.2.2.2", ["10.3.3.3"], PROXIES) == "10.3.3.3"  # all trusted: the left-most


def test_rfc7239_forwarded():
    chain = forwarded_chain("forwarded", ['for=6.6.6.6, for="[2001:db8:1::5]:4711";proto=https;by=10.0.0.1'])
    assert client_address("10.0.0.1", chain, PROXIES) == "2001:db8:1::5"
    assert forwarded_chain("forwarded", ["proto=https"]) == [""]


def test_ipv6_is_grouped_by_64_and_ipv4_by_address():
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff::9") == "ip:2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("192.0.2.1") != address_key("192.0.2.2")
    assert address_key("::ffff:192.0.2.1") == address_key("192.0.2.1")


def _write(tmp_path, name, data, mode=0o600):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    os.chmod(path, mode)
    return path


DEFAULTS = Limits(60, 40_000, 4)


def test_api_keys_from_yaml_with_per_key_limits(tmp_path):
    path = _write(tmp_path, "keys.yaml", "keys:\n  - {name: alice, key: alice-0123456789abcdef, "
                                         "requests_per_minute: 5, concurrency: 1}\n"
                                         "  - {name: bob, key: bob-0123456789abcdefgh}\n")
    keys = ApiKeys.load(path)
    alice = keys.lookup("alice-0123456789abcdef", DEFAULTS)
    assert alice.name == "alice" and alice.limits == Limits(5, 40_000, 1) and alice.client_key == "key:alice"
    assert keys.lookup("bob-0123456789abcdefgh", DEFAULTS).limits == DEFAULTS
    assert keys.lookup("alice-0123456789abcdeX", DEFAULTS) is None
    assert keys.lookup("", DEFAULTS) is None


@pytest.mark.parametrize("name, data, mode, message", [
    ("keys.json", {"keys": [{"name": "a", "key": "k" * 16}]}, 0o644, "chmod 600"),
    ("keys.json", {"keys": [{"name": "a", "key": "short"}]}, 0o600, "expected shape"),
    ("keys.json", {"keys": [{"name": "a", "key": "k" * 16, "admin": True}]}, 0o600, "expected shape"),
    ("keys.json", {"keys": [{"name": "a", "key": "k" * 16}, {"name": "b", "key": "k" * 16}]}, 0o600, "twice"),
    ("keys.json", "{nope", 0o600, "not valid JSON"),
    ("keys.yaml", "keys: [", 0o600, "not valid YAML"),
])
def test_bad_api_key_files_are_refused_with_a_sentence(tmp_path, name, data, mode, message):
    with pytest.raises(ApiKeyFileError, match=message):
        ApiKeys.load(_write(tmp_path, name, data, mode))


def test_the_gateway_command_refuses_a_key_file_others_can_read(tmp_path):
    from swarmllm import cli

    path = _write(tmp_path, "keys.json", {"keys": [{"name": "a", "key": "k" * 16}]}, 0o640)
    args = cli.build_parser().parse_args(["gateway", "--initial-peers", "/ip4/127.0.0.1/tcp/1",
                                          "--api-keys", str(path)])
    with pytest.raises(SystemExit, match="chmod 600"):
        cli.cmd_gateway(args)  # before any network or HTTP server is started
    args = cli.build_parser().parse_args(["gateway", "--initial-peers", "/ip4/127.0.0.1/tcp/1",
                                          "--trust-forwarded-for", "10.0.0.0/8,proxy"])
    with pytest.raises(SystemExit, match="not an IP network"):
        cli.cmd_gateway(args)


def test_missing_api_key_file(tmp_path):
    with pytest.raises(ApiKeyFileError, match="cannot read"):
        ApiKeys.load(tmp_path / "absent.yaml")


def test_bearer_token():
    assert bearer_token(None) is None
    assert bearer_token("Bearer  abc ") == "abc"
    assert bearer_token("bearer abc") == "abc"
    assert bearer_token("Basic abc") == ""  # present but not a bearer key: refused, not anonymous


def _run_body_limit(chunks: list[bytes], max_bytes: int, headers=()):
    """Drive BodyLimit with a body arriving in `chunks`; returns (status, what the app read, chunks pulled)."""
    pulled, sent, seen = [], [], []

    async def receive():
        if len(pulled) < len(chunks):
            pulled.append(chunks[len(pulled)])
            return {"type": "http.request", "body": pulled[-1], "more_body": len(pulled) < len(chunks)}
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    async def app(scope, receive, send):
        while True:
            message = await receive()
            seen.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    scope = {"type": "http", "method": "POST", "path": "/", "headers": list(headers)}
    asyncio.run(BodyLimit(app, max_bytes)(scope, receive, send))
    return sent[0]["status"], b"".join(seen), len(pulled), sent


def test_a_chunked_body_over_the_limit_is_413_without_reading_past_it():
    status, seen, pulled, sent = _run_body_limit([b"x" * 400] * 10, max_bytes=1000)
    assert status == 413 and seen == b"" and pulled == 3  # stopped at the chunk that crossed the limit
    assert json.loads(sent[1]["body"])["error"]["code"] == "body_too_large"


def test_a_body_within_the_limit_reaches_the_app_unchanged():
    status, seen, pulled, _ = _run_body_limit([b"a" * 400, b"b" * 400], max_bytes=1000)
    assert status == 200 and seen == b"a" * 400 + b"b" * 400


def test_a_declared_length_over_the_limit_is_refused_before_reading():
    status, _, pulled, _ = _run_body_limit([b"x"], max_bytes=1000, headers=[(b"content-length", b"5000")])
    assert status == 413 and pulled == 0
    status, _, pulled, _ = _run_body_limit([b"x"], max_bytes=1000, headers=[(b"content-length", b"-1")])
    assert status == 413 and pulled == 0
