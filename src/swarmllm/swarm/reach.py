"""Reachability: whether other peers can dial this node, and the relays that carry it when not.

Most volunteers sit behind a home router that drops inbound connections. What this module gives
`SwarmNode` (node.py):

- `Reach`: how a node takes part. `relay_service` (a relay-capable public peer: the bootstrap by
  default) relays circuits for others, through libp2p circuit relay v2 with limits fit for
  inference traffic (`RELAY_LIMITS`: p2pd's defaults reset a relayed connection after 128 KiB).
  `use_relays` (serve's `--relay`, default on) lets a node that nobody can dial reserve a slot at
  `relays` (default: its initial peers) and be reached through `<relay>/p2p-circuit`.
  `reachability` "auto" asks the swarm; "public"/"private" skip the question.
- The probe (our AutoNAT): a node asks up to `PROBE_PEERS` peers over `REACH_HANDLER` to dial it
  back; each dials, with a plain TCP connect, the address *it observes* the request coming from
  and the port the node says it listens on, and answers yes or no. A prober only ever dials the
  requester's own observed IP (so nobody can point it at a third party), at most
  `PROBES_PER_PEER_PER_MINUTE` times a minute per peer and `PROBES_PER_IP_PER_MINUTE` per IP (fresh
  peer ids are free to make; addresses are not). The verdict is "public" only when most probers
  that answered reached us; a tie or a majority of no is "private"; no answer: "unknown" (treated
  as public: the node keeps its direct addresses). The bias is deliberate: a node wrongly judged
  private still serves, through a relay, at a small cost (benchmarks/nat_relay.py); one wrongly
  judged public announces addresses nobody can dial and serves nobody. So one lying prober among
  honest ones cannot make a home node unreachable; a node whose probers are mostly liars can be
  fooled (its initial peers are the ones it chose to trust).
  libp2p's own AutoNAT and hole punching (DCUtR) run too (p2pd `-autonat`); they act only on
  addresses libp2p deems public, so a LAN or a test network (RFC 1918 addresses) never triggers
  them, and the probe decides the record.
- `encode_multiaddr(text)`: the binary form p2pd's control protocol expects. hivemind's
  Multiaddr encodes /p2p/ as a CID, which p2pd refuses ("length greater than remaining number of
  bytes in buffer"); here /p2p/ is the raw multihash, as in go-multiaddr.
- `circuit_addresses(relays)`: the addresses a relayed node announces.

Everything a peer says here is a hint: the peer id of every stream is authenticated by libp2p,
and clients measure the round trip through the relay (ping) before they route through it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Optional, Sequence

from swarmllm.protocol.compact_header import uleb128  # multiaddr codes and lengths are unsigned varints too

REACH_HANDLER = "swarmllm.reach/1"
PROBE_PEERS = 3                 # peers asked to dial back
PROBE_DIAL_TIMEOUT = 3.0        # s a prober waits for the TCP handshake
PROBE_TIMEOUT = 8.0             # s a node waits for all answers
PROBES_PER_PEER_PER_MINUTE = 6
PROBES_PER_IP_PER_MINUTE = 24  # one machine's peer ids together
MAX_REQUEST_BYTES = 256

# p2pd flags of a relay service: a relayed connection may carry 64 GiB each way and last a day
# (p2pd's defaults for relays it runs itself: 128 KiB and 2 min, which reset a session mid-reply).
RELAY_LIMITS = {"relayDataLimit": 1 << 36, "relayTimeLimit": "24h", "relayMaxCircuits": 64,
                "relayMaxReservations": 256}

REACHABILITIES = ("auto", "public", "private")


@dataclass(frozen=True)
class Reach:
    """How a node is reached (module docstring)."""

    relay_service: bool = False        # relay circuits for other peers (a public peer)
    use_relays: bool = True            # when nobody can dial us, reserve a slot at a relay
    relays: tuple[str, ...] = ()       # relay multiaddrs (with /p2p/ID); default: the initial peers
    reachability: str = "auto"         # "auto" (probe), "public" or "private"

    def __post_init__(self):
        if self.reachability not in REACHABILITIES:
            raise ValueError(f"reachability must be one of {', '.join(REACHABILITIES)}, not {self.reachability!r}")


def daemon_flags(reach: Reach, private: bool, relays: Sequence[str]) -> dict:
    """Extra p2pd flags (beyond hivemind's) for a node of this reach; `private`: the probe said so."""
    flags: dict = {"relayService": bool(reach.relay_service)}
    if reach.relay_service:
        flags.update(RELAY_LIMITS)
        flags["forceReachabilityPublic"] = True  # p2pd starts its relay manager (our limits) only when public
    if private and reach.use_relays and relays:
        # static relays, no discovery (which waits minutes for 4 candidates); private, so that autorelay
        # reserves at once instead of waiting for libp2p's AutoNAT, which never judges RFC 1918 networks
        flags.update(autoRelay=True, relayDiscovery=False, trustedRelays=",".join(relays),
                     forceReachabilityPrivate=True)
    return flags


def circuit_addresses(relays: Sequence[str]) -> list[str]:
    """`<relay>/p2p-circuit` for each relay multiaddr that names its peer id."""
    return [f"{relay}/p2p-circuit" for relay in relays if "/p2p/" in relay and "p2p-circuit" not in relay]


def is_relayed(address: str) -> bool:
    return "/p2p-circuit" in address


# --- the binary multiaddr p2pd reads ------------------------------------------------------
_P2P, _CIRCUIT = 421, 290


def encode_multiaddr(text: str, encode_transport, decode_peer_id) -> bytes:
    """`text` (/ip4/../tcp/..[/p2p/ID][/p2p-circuit[/p2p/ID]]) as go-multiaddr bytes. `encode_transport`
    encodes a part without /p2p/ (hivemind's Multiaddr), `decode_peer_id` gives a peer id's multihash."""
    out, rest = bytearray(), text
    while rest:
        if rest.startswith("/p2p-circuit"):
            out += uleb128(_CIRCUIT)
            rest = rest[len("/p2p-circuit"):]
        elif rest.startswith("/p2p/"):
            peer, _, tail = rest[len("/p2p/"):].partition("/")
            digest = decode_peer_id(peer)
            out += uleb128(_P2P) + uleb128(len(digest)) + digest
            rest = "/" + tail if tail else ""
        else:
            cut = min([i for i in (rest.find("/p2p/", 1), rest.find("/p2p-circuit", 1)) if i > 0] or [len(rest)])
            out += encode_transport(rest[:cut])
            rest = rest[cut:]
    return bytes(out)


# --- the probe ----------------------------------------------------------------------------
def listen_port(addresses: Sequence[str]) -> Optional[int]:
    """The TCP port of the first direct /tcp/ address (what a prober dials back)."""
    for address in addresses:
        parts = address.split("/")
        if "tcp" in parts and not is_relayed(address):
            try:
                return int(parts[parts.index("tcp") + 1])
            except (ValueError, IndexError):
                continue
    return None


def observed_host(address: str) -> Optional[str]:
    """The IP of a connection's remote multiaddr (/ip4/X/tcp/Y or /ip6/X/...), None if relayed or other."""
    parts = address.split("/")
    if is_relayed(address) or len(parts) < 3 or parts[1] not in ("ip4", "ip6"):
        return None
    return parts[2]


async def dial_back(host: str, port: int, timeout: float = PROBE_DIAL_TIMEOUT) -> bool:
    """Whether a TCP connection to host:port opens within `timeout` s (closed at once)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError, ValueError):
        return False
    writer.close()
    return True


@dataclass
class ProbeLimiter:
    """At most `per_minute` probes per key (a peer id, or an IP) in any 60 s."""

    per_minute: int = PROBES_PER_PEER_PER_MINUTE
    _seen: dict = field(default_factory=lambda: defaultdict(deque))

    def allow(self, key: str, now: Optional[float] = None) -> bool:
        now = time.monotonic() if now is None else now
        times = self._seen[key]
        while times and now - times[0] > 60.0:
            times.popleft()
        if len(times) >= self.per_minute:
            return False
        times.append(now)
        if len(self._seen) > 4096:  # forget the oldest peers: bounded memory
            for key in list(self._seen)[:1024]:
                del self._seen[key]
        return True


def probe_request(port: int) -> bytes:
    return json.dumps({"port": int(port)}).encode()


def parse_probe_request(frame: bytes) -> int:
    """The port asked to be dialled; ValueError for anything else."""
    if len(frame) > MAX_REQUEST_BYTES:
        raise ValueError("probe request too large")
    body = json.loads(frame)
    port = body.get("port") if isinstance(body, dict) else None
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ValueError("probe request without a valid port")
    return port


def probe_reply(reachable: bool, observed: str, error: str = "") -> bytes:
    return json.dumps({"reachable": bool(reachable), "observed": observed[:128], "error": error[:200]}).encode()


def parse_probe_reply(frame: bytes) -> Optional[bool]:
    """True/False as the prober says, None for a malformed or refused answer."""
    try:
        body = json.loads(frame[:MAX_REQUEST_BYTES * 4])
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("error") or not isinstance(body.get("reachable"), bool):
        return None
    return body["reachable"]


def verdict(answers: Sequence[Optional[bool]]) -> str:
    """'public' if most probers that answered reached us, 'private' on a tie or a majority of no,
    'unknown' if none answered (module docstring: a wrong 'private' costs a relay, a wrong 'public'
    makes the node unreachable)."""
    known = [a for a in answers if a is not None]
    if not known:
        return "unknown"
    return "public" if 2 * sum(known) > len(known) else "private"
