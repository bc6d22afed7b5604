"""LAN discovery's TXT records (swarm/lan.py): what we advertise parses back, and whatever else
arrives from the network is ignored, entry by entry, without raising. No network here."""

from __future__ import annotations

import asyncio
import random

import pytest

from swarmllm.swarm import lan
from swarmllm.swarm.lan import LanPeer, decode_txt, encode_txt, lan_addresses, parse_multiaddr, parse_txt

PEER = "12D3KooWGathRLn2PqVWhcRVbvRJzwzicMW2iEqVdV9ehURXebbg"
OTHER = "12D3KooWBLnZLh6ZYb4Gq9b73zyunFaSwkFU2NNRGk45HkB6FtSh"


def txt(*strings: bytes) -> bytes:
    return b"".join(bytes([len(s)]) + s for s in strings)


def good_strings(**override: bytes) -> list[bytes]:
    items = {"v": b"1", "id": PEER.encode(), "swarm": b"default", "role": b"server", "m": b"smollm2-135m",
             "a0": f"/ip4/10.1.2.3/tcp/4001/p2p/{PEER}".encode()}
    items.update(override)
    return [k.encode() + b"=" + v for k, v in items.items()]


def test_advertised_record_parses_back_without_loopback():
    peer = LanPeer(PEER, "home-lab", "bootstrap", (f"/ip4/127.0.0.1/tcp/1/p2p/{PEER}", f"/ip4/10.0.0.5/tcp/31337/p2p/{PEER}",
                                                  f"/ip6/fe80::1/tcp/31337/p2p/{PEER}"), ("smollm2-135m", "qwen.5b"))
    back = parse_txt(encode_txt(peer))
    assert back == LanPeer(PEER, "home-lab", "bootstrap", (f"/ip4/10.0.0.5/tcp/31337/p2p/{PEER}",
                                                           f"/ip6/fe80::1/tcp/31337/p2p/{PEER}"), ("smollm2-135m", "qwen.5b"))


def test_nothing_to_advertise_is_refused_on_our_side():
    with pytest.raises(ValueError, match="no LAN address"):
        encode_txt(LanPeer(PEER, "default", "server", (f"/ip4/127.0.0.1/tcp/1/p2p/{PEER}",)))
    with pytest.raises(ValueError, match="--swarm-name"):
        encode_txt(LanPeer(PEER, "bad name!", "server", (f"/ip4/10.0.0.1/tcp/1/p2p/{PEER}",)))


@pytest.mark.parametrize("address", [
    f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}",        # loopback: the dialer's own machine
    f"/ip4/0.0.0.0/tcp/4001/p2p/{PEER}",          # unspecified
    f"/ip4/224.0.0.251/tcp/4001/p2p/{PEER}",      # multicast
    f"/ip4/255.255.255.255/tcp/4001/p2p/{PEER}",
    f"/ip6/::1/tcp/4001/p2p/{PEER}",
    f"/ip4/10.1.2.3/tcp/4001/p2p/{OTHER}",        # another peer id than the TXT's
    f"/ip4/10.1.2.3/tcp/4001",                    # no /p2p
    f"/ip4/10.1.2.3/udp/4001/p2p/{PEER}",
    f"/ip4/10.1.2.3/tcp/0/p2p/{PEER}",
    f"/ip4/10.1.2.3/tcp/65536/p2p/{PEER}",
    f"/ip4/10.1.2.3/tcp/-1/p2p/{PEER}",
    f"/ip4/10.1.2.3/tcp/٤٠٠١/p2p/{PEER}",         # digits, but not ASCII ones
    f"/ip4/010.1.2.3/tcp/4001/p2p/{PEER}",        # leading zeros: ambiguous (octal?)
    f"/ip4/10.1.2/tcp/4001/p2p/{PEER}",
    f"/dns4/example.com/tcp/4001/p2p/{PEER}",     # names would be resolved: only literal addresses
    f"/ip4/10.1.2.3/tcp/4001/p2p/{PEER}/p2p-circuit",
    f"ip4/10.1.2.3/tcp/4001/p2p/{PEER}",
    "/ip4/10.1.2.3/tcp/4001/p2p/0OIl",             # not base58
    "",
])
def test_undialable_or_foreign_addresses_are_dropped(address):
    assert parse_multiaddr(address, PEER) is None
    assert parse_txt(txt(*good_strings(a0=address.encode()))) is None  # its only address: no peer at all


def test_addresses_are_canonical_deduplicated_and_bounded():
    many = [f"/ip4/10.0.0.{i}/tcp/4001/p2p/{PEER}" for i in range(1, 20)]
    assert lan_addresses(many + many, PEER) == many[:lan.MAX_LAN_ADDRESSES]
    assert parse_multiaddr(f"/ip6/FE80:0:0::1/tcp/04001/p2p/{PEER}", PEER) == f"/ip6/fe80::1/tcp/4001/p2p/{PEER}"
    strings = good_strings() + [f"a{i}=/ip4/10.0.1.{i}/tcp/1/p2p/{PEER}".encode() for i in range(1, 20)]
    peer = parse_txt(txt(*strings))
    assert len(peer.addresses) == lan.MAX_LAN_ADDRESSES and peer.addresses[0] == f"/ip4/10.1.2.3/tcp/4001/p2p/{PEER}"


def test_one_bad_address_does_not_hide_the_good_ones():
    peer = parse_txt(txt(*good_strings(), b"a1=/ip4/127.0.0.1/tcp/1/p2p/" + PEER.encode(), b"a2=garbage",
                         b"a3=/ip4/10.9.9.9/tcp/9/p2p/" + PEER.encode()))
    assert peer.addresses == (f"/ip4/10.1.2.3/tcp/4001/p2p/{PEER}", f"/ip4/10.9.9.9/tcp/9/p2p/{PEER}")


@pytest.mark.parametrize("override", [
    {"v": b"2"}, {"v": b""}, {"id": b"not a peer id"}, {"id": b""}, {"swarm": b""}, {"swarm": b"-x"},
    {"swarm": b"x" * 65}, {"swarm": b"a b"}, {"role": b"client"}, {"role": b""}, {"id": OTHER.encode()},
])
def test_records_this_version_cannot_use_are_ignored(override):
    assert parse_txt(txt(*good_strings(**override))) is None


def test_a_missing_key_is_a_peer_this_version_cannot_use():
    for key in (b"v=", b"id=", b"swarm=", b"role=", b"a0="):
        assert parse_txt(txt(*[s for s in good_strings() if not s.startswith(key)])) is None
    assert parse_txt(txt(*[s for s in good_strings() if not s.startswith(b"m=")])).models == ()


def test_bad_model_ids_are_dropped_one_by_one():
    peer = parse_txt(txt(*good_strings(m=b"smollm2-135m,../etc,,x" + b"y" * 200 + b",gemma3-270m")))
    assert peer.models == ("smollm2-135m", "gemma3-270m")


def test_first_occurrence_of_a_key_wins_and_keys_ignore_case():
    # RFC 6763 6.4: a later duplicate must be ignored, so a second "id" cannot swap the peer id.
    peer = parse_txt(txt(*good_strings(), b"ID=" + OTHER.encode(), b"a1=/ip4/10.0.0.9/tcp/1/p2p/" + OTHER.encode()))
    assert peer.peer_id == PEER and peer.addresses == (f"/ip4/10.1.2.3/tcp/4001/p2p/{PEER}",)
    assert decode_txt(txt(b"Swarm=lab", b"swarm=other")) == {"swarm": "lab"}


@pytest.mark.parametrize("raw", [
    b"", b"\x00", b"\xff", b"\x05ab", b"\x03v=1\x10short", txt(b"noequals"), txt(b"=value"),
    txt(b"v=\xff\xfe"), txt(b"\xc3\xa9=1"), txt(b"id=" + PEER.encode() + b"\x00"), txt(b"swarm=a\nb"),
])
def test_malformed_rdata_never_raises(raw):
    decode_txt(raw)
    assert parse_txt(raw) is None


def test_truncated_strings_and_non_bytes_are_skipped():
    raw = txt(*good_strings())
    assert parse_txt(raw[:-5]) is None  # the address string is cut short: dropped, so no address
    assert decode_txt(None) == {} and decode_txt("v=1") == {}  # type: ignore[arg-type]
    assert lan.peer_from_txt({"v": 1, "id": None}) is None  # type: ignore[dict-item]


def test_only_the_first_strings_are_read():
    filler = [f"x{i}=y".encode() for i in range(lan.MAX_TXT_STRINGS)]
    assert parse_txt(txt(*filler, *good_strings())) is None
    assert parse_txt(txt(*good_strings(), *filler)) is not None


def test_random_bytes_never_raise():
    rng = random.Random(7)
    for _ in range(3000):
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(300)))
        peer = parse_txt(raw)
        assert peer is None or isinstance(peer, LanPeer)
    good = txt(*good_strings())
    for _ in range(3000):  # bit flips of a good record: parse or be ignored, nothing else
        raw = bytearray(good)
        for _ in range(rng.randrange(1, 4)):
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        peer = parse_txt(bytes(raw))
        assert peer is None or all(a.endswith("/p2p/" + peer.peer_id) for a in peer.addresses)


def test_model_list_longer_than_a_txt_string_keeps_whole_ids():
    models = tuple(f"model-{i:03d}-" + "x" * 40 for i in range(8))
    peer = parse_txt(encode_txt(LanPeer(PEER, "default", "server", (f"/ip4/10.0.0.1/tcp/1/p2p/{PEER}",), models)))
    assert peer.models and set(peer.models) <= set(models) and peer.models == models[:len(peer.models)]


def test_discovery_with_no_time_or_a_bad_name_does_not_touch_the_network():
    assert asyncio.run(lan.discover(timeout=0)) == []
    with pytest.raises(ValueError, match="--swarm-name"):
        asyncio.run(lan.discover("no spaces please", timeout=1))


def test_no_swarm_found_says_what_to_do():
    with pytest.raises(lan.NoLanSwarmError, match="--initial-peers MADDR.*--lan-timeout"):
        asyncio.run(lan.lan_initial_peers("default", 0.01, may_start=False, interfaces=[]))
    assert asyncio.run(lan.lan_initial_peers("default", 0.01, may_start=True, interfaces=[])) == []


def test_advertiser_with_only_loopback_addresses_advertises_nothing():
    advertiser = lan.LanAdvertiser()
    assert asyncio.run(advertiser.start(PEER, [f"/ip4/127.0.0.1/tcp/1/p2p/{PEER}"], role="server")) is False
    assert advertiser.advertised is None
    asyncio.run(advertiser.stop())  # stopping what never started is fine


def test_cli_spells_out_the_lan_defaults():
    from swarmllm import cli_parser

    assert (cli_parser.LAN_TIMEOUT, cli_parser.LAN_SWARM_NAME) == (lan.DEFAULT_TIMEOUT, lan.DEFAULT_SWARM_NAME)


def test_swarm_addresses_keep_one_swarm_distinct_and_bounded():
    a = LanPeer(PEER, "default", "server", (f"/ip4/10.0.0.1/tcp/1/p2p/{PEER}",))
    impostor = LanPeer(PEER, "default", "server", (f"/ip4/10.0.0.99/tcp/1/p2p/{PEER}",))
    other = LanPeer(OTHER, "elsewhere", "server", (f"/ip4/10.0.0.2/tcp/1/p2p/{OTHER}",))
    # A second service naming a's peer id adds its address, it does not replace a's.
    assert lan.swarm_addresses([a, other, impostor, a], "default") == [a.addresses[0], impostor.addresses[0]]
    flood = [LanPeer(PEER, "default", "server", (f"/ip4/10.0.{i // 200}.{i % 200 + 1}/tcp/1/p2p/{PEER}",))
             for i in range(100)]
    assert len(lan.swarm_addresses(flood, "default")) == lan.MAX_DIAL_ADDRESSES
