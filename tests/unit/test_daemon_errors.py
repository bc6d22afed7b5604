"""p2pd's errors reach users as sentences that say what to do, never as raw log lines.

The texts below are what hivemind 1.1.12's P2P raised when these errors were provoked on
loopback (a port already bound, malformed and unreachable initial peers, an HTTP server or a
silent socket where a peer should be, a killed peer, an unknown protocol name): str(error),
timestamps included.
"""

from __future__ import annotations

import re

import pytest

from swarmllm.swarm.daemon import daemon_detail, explain_daemon_error

PEER = "12D3KooWLHKsNVCpVYnWEL5y5nuesEBsPZq4gz55RkKBdC3GD4U4"
BOOTSTRAP = f"/ip4/127.0.0.1/tcp/9/p2p/{PEER}"

STARTUP = {
    "address_in_use": "Daemon failed to start: 2026/12/01 19:36:16 failed to listen on any addresses: "
                      "[listen tcp4 127.0.0.1:56091: bind: address already in use]",
    "no_peer_id": "Daemon failed to start: 2026/12/01 19:36:16 invalid p2p multiaddr",
    "garbage": 'Daemon failed to start: 2026/12/01 19:36:16 failed to parse multiaddr "not-a-multiaddr": '
               "must begin with /",
    "bad_ip": 'Daemon failed to start: 2026/12/01 19:36:16 failed to parse multiaddr "/ip4/999.0.0.1/tcp/0": '
              'invalid value "999.0.0.1" for protocol ip4: failed to parse ip4 addr: 999.0.0.1',
    "unreachable": "Daemon failed to start: 2026/12/01 19:36:17 failed to connect to bootstrap peers",
    "startup_timeout": "Daemon failed to start in 30.0 seconds",
}

STREAM = {
    "no_handler": "Connect failed. msg=failed to negotiate protocol: protocols not supported: [swarmllm.nope]",
    "unknown_peer": "Connect failed. msg=routing: not found",
    "refused": f"Connect failed. msg=failed to dial: failed to dial {PEER}: all dials failed\n"
               "  * [/ip4/127.0.0.1/tcp/45607] dial tcp4 127.0.0.1:45607: connect: connection refused",
    "backoff": f"Connect failed. msg=failed to dial: failed to dial {PEER}: all dials failed\n"
               "  * [/ip4/127.0.0.1/tcp/45607] dial backoff",
    "not_libp2p": f"Connect failed. msg=failed to dial: failed to dial {PEER}: all dials failed\n"
                  "  * [/ip4/127.0.0.1/tcp/39475] failed to negotiate security protocol: message did not have "
                  "trailing newline",
    "no_route": f"Connect failed. msg=failed to dial: failed to dial {PEER}: all dials failed\n"
                "  * [/ip4/127.0.0.1/tcp/39475] dial backoff\n"
                "  * [/ip6/2001:db8::1/tcp/4001] dial tcp6 [2001:db8::1]:4001: connect: no route to host",
    "timeout": f"Connect failed. msg=failed to dial: failed to dial {PEER}: all dials failed\n"
               "  * [/ip4/127.0.0.1/tcp/45865] failed to negotiate security protocol: context deadline exceeded",
}

TIMESTAMP = re.compile(r"\d{4}/\d{2}/\d{2} \d{2}:\d{2}")


def _is_sentence(text: str) -> bool:
    return "\n" not in text and not TIMESTAMP.search(text) and "msg=" not in text and "Daemon failed" not in text


@pytest.mark.parametrize("case, expected", [
    ("address_in_use", "port 56091 on 127.0.0.1 is already in use; stop whatever holds it or pass another --port"),
    ("no_peer_id", "lacks its /p2p/<peer id> part"),
    ("garbage", '"not-a-multiaddr" is not a valid multiaddr; addresses look like /ip4/HOST/tcp/PORT/p2p/PEER_ID'),
    ("bad_ip", '"/ip4/999.0.0.1/tcp/0" is not a valid multiaddr'),
    ("unreachable", f"could not join the swarm through {BOOTSTRAP}: none of them answered"),
    ("startup_timeout", "did not start within 30.0 s"),
])
def test_startup_errors(case, expected):
    sentence = explain_daemon_error(STARTUP[case], initial_peers=[BOOTSTRAP], port=0)
    assert expected in sentence and _is_sentence(sentence), sentence


@pytest.mark.parametrize("case, expected", [
    ("no_handler", f"peer {PEER} does not serve swarmllm.session: it is not a swarmllm node"),
    ("unknown_peer", f"peer {PEER} is not known to this node or the DHT"),
    ("refused", f"peer {PEER} refused the connection at /ip4/127.0.0.1/tcp/45607"),
    ("backoff", "is not dialled again yet; retry in a few seconds"),
    ("not_libp2p", "the peer at /ip4/127.0.0.1/tcp/39475 does not speak libp2p"),
    ("no_route", f"there is no network route to peer {PEER} at /ip6/2001:db8::1/tcp/4001"),  # not the back-off
    ("timeout", f"peer {PEER} did not answer in time at /ip4/127.0.0.1/tcp/45865"),
])
def test_stream_errors(case, expected):
    sentence = explain_daemon_error(STREAM[case], peer=PEER, handler="swarmllm.session")
    assert expected in sentence and _is_sentence(sentence), sentence


def test_unknown_errors_keep_their_text_without_the_noise():
    text = 'Daemon failed to start: 2026/12/01 19:36:16 something new broke\n{"level":"error","msg":"x"}'
    assert daemon_detail(text) == "something new broke"
    assert explain_daemon_error(text) == "the p2p daemon failed: something new broke"
    assert explain_daemon_error(text, peer=PEER) == f"could not open a stream to peer {PEER}: something new broke"
