"""Hostile peers against the reachability probe (swarm/reach.py) of a real swarm node over loopback.

The probe makes a node dial somebody back, so it is what an attacker would use to turn the swarm
into a port scanner or a flood of TCP connections, or to talk a node into a wrong verdict:
- a requester cannot choose whom the prober dials: a host in its request is ignored and the
  prober dials the address it observes the requester at (a listener the test runs there sees it);
- one peer id gets PROBES_PER_PEER_PER_MINUTE probes a minute, and fresh peer ids from one address
  together PROBES_PER_IP_PER_MINUTE;
- malformed and oversized requests get an error reply and the node keeps answering others;
- lying probers: a joining node asks its initial peers; one liar among honest probers does not
  change its verdict (a majority decides, a tie is "private", see reach.verdict).
"""

from __future__ import annotations

import asyncio
import json

import pytest

from reach_liar import start_liar
from swarmllm.swarm import BackgroundLoop, SwarmNode, reach

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def loop():
    loop = BackgroundLoop("reach-probe")
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def prober(loop):
    """An honest public node that answers probes (what every serving node runs)."""
    node = loop.run(SwarmNode.create([], reach=reach.Reach(reachability="public")), timeout=60)
    address = [a for a in loop.run(node.visible_addresses()) if "/p2p/" in a][0]
    yield node, address
    loop.run(node.shutdown(), timeout=15)


class Listener:
    """A TCP listener on loopback that counts the connections it gets (the 'dial back' target)."""

    def __init__(self):
        self.connections = 0
        self.server = None

    async def start(self) -> int:
        async def on_connect(reader, writer):
            self.connections += 1
            writer.close()
        self.server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self):
        self.server.close()
        await self.server.wait_closed()


async def ask(requester: SwarmNode, prober_id: str, frame: bytes) -> dict:
    stream = await requester.open_stream(prober_id, reach.REACH_HANDLER)
    try:
        await stream.send(frame)
        return json.loads(await stream.recv())
    finally:
        stream.close()


def requester(loop, prober_address) -> SwarmNode:
    # client mode: it serves no probes and does not probe; a peer id of its own on the same IP
    return loop.run(SwarmNode.create([prober_address], client_mode=True), timeout=60)


def test_a_requester_cannot_aim_the_dial_back_and_is_rate_limited(loop, prober):
    node, address = prober
    listener = Listener()
    port = loop.run(listener.start())
    evil = requester(loop, address)
    try:
        # A host in the request is ignored: the prober dials the address it sees us at (loopback), so the
        # listener there is dialled; nobody can point a prober at a third party.
        reply = loop.run(ask(evil, node.peer_id, json.dumps({"port": port, "host": "192.0.2.7"}).encode()))
        assert reply["reachable"] is True and reply["observed"].startswith("/ip4/127.0.0.1/")
        assert listener.connections == 1
        answers = [loop.run(ask(evil, node.peer_id, reach.probe_request(port)))
                   for _ in range(reach.PROBES_PER_PEER_PER_MINUTE + 3)]
        refused = [a for a in answers if "too many probes" in a["error"]]
        assert len(refused) == 4 and all(a["reachable"] is False for a in refused)  # 1 + 5 answered, then refused
        assert listener.connections == reach.PROBES_PER_PEER_PER_MINUTE  # refused probes dial nobody
    finally:
        loop.run(evil.shutdown(), timeout=15)
        loop.run(listener.stop())


def test_fresh_peer_ids_from_one_address_share_a_budget(loop, prober):
    node, address = prober
    listener = Listener()
    port = loop.run(listener.start())
    sybils = [requester(loop, address) for _ in range(reach.PROBES_PER_IP_PER_MINUTE // reach.PROBES_PER_PEER_PER_MINUTE)]
    try:
        errors = [loop.run(ask(s, node.peer_id, reach.probe_request(port)))["error"]
                  for s in sybils for _ in range(reach.PROBES_PER_PEER_PER_MINUTE)]
        # the previous test's requester spent 6 of this address's budget within the minute
        assert sum("from this address" in e for e in errors) >= reach.PROBES_PER_PEER_PER_MINUTE
        assert listener.connections <= reach.PROBES_PER_IP_PER_MINUTE
    finally:
        for s in sybils:
            loop.run(s.shutdown(), timeout=15)
        loop.run(listener.stop())


@pytest.mark.parametrize("frame", [b"\xff\xfe not utf-8", b"{", b'{"port": 0}', b'{"port": "22"}',
                                   json.dumps({"port": 80, "pad": "x" * 1000}).encode()])
def test_malformed_requests_get_an_error_and_the_node_keeps_answering(loop, prober, frame):
    node, address = prober
    evil = requester(loop, address)
    try:
        reply = loop.run(ask(evil, node.peer_id, frame))
        assert reply["reachable"] is False and reply["error"].startswith("bad request")
        # the node still answers (a verdict, or the address's spent budget from the tests above)
        assert isinstance(loop.run(ask(evil, node.peer_id, reach.probe_request(1)))["reachable"], bool)
    finally:
        loop.run(evil.shutdown(), timeout=15)


def test_one_lying_prober_among_honest_ones_does_not_change_the_verdict(loop, prober):
    _, address = prober  # the module's prober has spent loopback's budget above: two fresh honest ones
    honest = [loop.run(SwarmNode.create([address], reach=reach.Reach(reachability="public")), timeout=60)
              for _ in range(2)]
    liar = loop.run(start_liar([address], answer=False), timeout=60)
    joiner = None
    try:
        peers = [[a for a in loop.run(h.visible_addresses()) if "/p2p/" in a][0] for h in honest]
        peers.append([a for a in loop.run(liar.visible_addresses()) if "/p2p/" in a][0])
        # on loopback the truth is "public": two honest yes, one lying no
        joiner = loop.run(SwarmNode.create(peers), timeout=60)
        assert joiner.reachability == "public"
    finally:
        for n in (joiner, liar, *honest):
            if n is not None:
                loop.run(n.shutdown(), timeout=15)
