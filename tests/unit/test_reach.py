"""The reachability probe's pure parts (swarm/reach.py): the verdict, the limiter, the request parser."""

from __future__ import annotations

import pytest

from swarmllm.swarm import reach


@pytest.mark.parametrize("answers, expected", [
    ([], "unknown"),
    ([None, None], "unknown"),
    ([True], "public"),
    ([False], "private"),
    ([True, True, False], "public"),      # one lying "no" among honest probers changes nothing
    ([True, False], "private"),           # a tie is private: a relayed node still serves
    ([True, False, False], "private"),    # one lying "yes" cannot make a home node announce dead addresses
    ([True, None, None], "public"),       # only answers count
    ([False, None], "private"),
])
def test_verdict_is_the_majority_and_a_tie_is_private(answers, expected):
    assert reach.verdict(answers) == expected


def test_limiter_counts_each_key_over_a_sliding_minute():
    limiter = reach.ProbeLimiter(per_minute=3)
    assert [limiter.allow("a", now=t) for t in (0, 1, 2, 3)] == [True, True, True, False]
    assert limiter.allow("b", now=3)              # another key has its own budget
    assert not limiter.allow("a", now=59)
    assert limiter.allow("a", now=61)             # the probe at t=0 left the window
    assert not limiter.allow("a", now=61)           # 1, 2 and 61 fill it again


def test_limiter_memory_is_bounded():
    limiter = reach.ProbeLimiter(per_minute=1)
    for i in range(5000):
        limiter.allow(f"peer{i}", now=0)
    assert len(limiter._seen) <= 4097


@pytest.mark.parametrize("frame", [b"", b"junk", b"[]", b'{"port": 0}', b'{"port": 65536}', b'{"port": "80"}',
                                   b'{"port": true}', b'{"host": "10.0.0.1"}', b'{"port": 80' + b" " * 300 + b"}"])
def test_malformed_probe_requests_are_refused(frame):
    with pytest.raises((ValueError, UnicodeDecodeError)):
        reach.parse_probe_request(frame)


def test_a_request_names_a_port_only():
    # a host in the request is not even read: the prober dials the address it observes
    assert reach.parse_probe_request(b'{"port": 4242, "host": "192.0.2.1"}') == 4242


@pytest.mark.parametrize("frame, expected", [
    (reach.probe_reply(True, "/ip4/1.2.3.4/tcp/5"), True),
    (reach.probe_reply(False, "/ip4/1.2.3.4/tcp/5"), False),
    (reach.probe_reply(True, "", "too many probes"), None),  # a refusal is no answer
    (b"not json", None), (b'{"reachable": "yes"}', None), (b"[true]", None),
])
def test_probe_replies(frame, expected):
    assert reach.parse_probe_reply(frame) is expected


def test_addresses():
    assert reach.listen_port(["/ip4/1.2.3.4/tcp/9/p2p/X/p2p-circuit", "/ip4/1.2.3.4/tcp/31337"]) == 31337
    assert reach.listen_port(["/ip4/1.2.3.4/udp/9"]) is None
    assert reach.observed_host("/ip4/10.1.2.3/tcp/4") == "10.1.2.3"
    assert reach.observed_host("/ip4/10.1.2.3/tcp/4/p2p/R/p2p-circuit") is None
    assert reach.circuit_addresses(["/ip4/1.2.3.4/tcp/5/p2p/R", "/ip4/1.2.3.4/tcp/6"]) == \
        ["/ip4/1.2.3.4/tcp/5/p2p/R/p2p-circuit"]
