"""Invite tokens (protocol/invite.py): round trip, and a clear error for every way a token goes bad."""

from __future__ import annotations

import pytest

from swarmllm.protocol.invite import DEFAULT_TTL, Invite, InviteError, encode_invite, make_invite, parse_invite

PEER = "12D3KooWH9Ue7VKVaAx62yGPpxcDS52qZ1Asr7RPe1aCypB83Jzw"
RELAY = "12D3KooWMgEutYBMJTK9N65WYqhGofbXwJ44yGw6R3Y7AhBwk45z"
ADDRESSES = [f"/ip4/127.0.0.1/tcp/31337/p2p/{PEER}", f"/ip4/192.168.1.4/tcp/31337/p2p/{PEER}",
             f"/ip4/203.0.113.7/tcp/4001/p2p/{RELAY}"]


def token(now=1000.0, **kw):
    return encode_invite(make_invite(ADDRESSES, ["smollm2-135m"], now=now, **kw))


def test_a_token_round_trips_and_puts_loopback_last():
    invite = parse_invite(token(), now=1001.0)
    assert invite.models == ("smollm2-135m",) and invite.swarm == "default"
    assert set(invite.peers) == set(ADDRESSES) and invite.peers[-1].startswith("/ip4/127.")
    assert invite.expires_at == 1000.0 + DEFAULT_TTL


def test_line_breaks_from_a_chat_window_do_not_matter():
    text = token()
    assert parse_invite(text[:40] + "\n  " + text[40:], now=1001.0) == parse_invite(text, now=1001.0)


@pytest.mark.parametrize("mangle,words", [
    (lambda t: t[:-4], "cut short"),
    (lambda t: t[:30] + ("A" if t[30] != "A" else "B") + t[31:], "check digits"),
    (lambda t: "swarmllm9" + t[len("swarmllm1"):], "update swarmllm"),
    (lambda t: "hello world", "not a swarmllm invite"),
    (lambda t: t.split(".")[0] + ".!!!." + t.split(".")[2], "garbled|check digits"),
    (lambda t: "swarmllm1." + "A" * 5000, "more than any token"),
])
def test_malformed_tokens_get_a_sentence(mangle, words):
    with pytest.raises(InviteError, match=words):
        parse_invite(mangle(token()), now=1001.0)


def test_an_expired_token_is_stale():
    with pytest.raises(InviteError, match="expired 10 day"):
        parse_invite(token(ttl=86400.0), now=1000.0 + 11 * 86400)


def test_contents_are_validated_not_trusted():
    with pytest.raises(ValueError):
        Invite(peers=("/ip4/1.2.3.4/tcp/1",), issued_at=0, expires_at=1)  # no /p2p/ peer id
    with pytest.raises(ValueError):
        Invite(peers=(f"/ip4/1.2.3.4/tcp/1/p2p/{PEER}",), models=("bad model",), issued_at=0, expires_at=1)
