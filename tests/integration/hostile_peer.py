"""A test-only hostile DHT peer: a real libp2p + Kademlia peer that ignores swarmllm's rules.

It is what `SwarmNode.create` builds (hivemind's p2pd daemon and `DHTNode`, joined through
the swarm's initial peers) minus the record validator and the bounded storage, and it
stores whatever it likes:
- `store_at(peer_id, items)` sends a DHT store RPC straight to one honest peer, bypassing
  any check on its own side, and returns that peer's answer per item (True = stored);
- `hold(items)` keeps values in its own storage, so it serves them to anyone's lookups.
It speaks no swarmllm stream protocol: a client that pings it gets no answer.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from swarmllm.swarm import hivemind_core  # noqa: F401  (hivemind without its __init__, as SwarmNode does)
from hivemind.dht.node import DHTNode
from hivemind.dht.routing import DHTID
from hivemind.p2p import P2P, PeerID
from hivemind.utils import MSGPackSerializer

Item = tuple[str, Optional[str], Any, float]  # (key, subkey or None for a plain value, value, expiration)


def _binary(value: Any) -> bytes:
    return value if isinstance(value, bytes) else MSGPackSerializer.dumps(value)


class HostilePeer:
    def __init__(self, p2p: P2P, dht: DHTNode):
        self.p2p, self.dht = p2p, dht
        self.peer_id = p2p.peer_id.to_base58()

    @classmethod
    async def join(cls, initial_peers: Sequence[str]) -> "HostilePeer":
        p2p = await P2P.create(initial_peers=list(initial_peers), host_maddrs=["/ip4/127.0.0.1/tcp/0"])
        dht = await DHTNode.create(p2p=p2p, initial_peers=list(initial_peers), cache_locally=False,
                                   cache_on_store=False, wait_timeout=3)
        return cls(p2p, dht)

    async def store_at(self, peer_id: str, items: Sequence[Item]) -> Optional[list[bool]]:
        """Ask `peer_id` to store `items`: its answer per item (True = stored), None if it did not answer."""
        answer = await self.dht.protocol.call_store(
            PeerID.from_base58(peer_id), keys=[DHTID.generate(source=key) for key, _, _, _ in items],
            values=[_binary(value) for _, _, value, _ in items],
            expiration_time=[expiration for _, _, _, expiration in items],
            subkeys=[subkey for _, subkey, _, _ in items])
        return list(answer) if answer is not None else None

    def hold(self, items: Sequence[Item]) -> None:
        """Keep `items` in this peer's own storage (it has no validator) and serve them on lookups."""
        for key, subkey, value, expiration in items:
            self.dht.protocol.storage.store(DHTID.generate(source=key), _binary(value), expiration, subkey=subkey)

    async def shutdown(self) -> None:
        await self.dht.shutdown()
        await self.p2p.shutdown()
