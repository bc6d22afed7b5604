"""LAN discovery by mDNS/DNS-SD: find a swarm's peers on the local network, and be found there.

A long-lived node (`swarmllm bootstrap`, `swarmllm serve`, the processes `swarmllm up` starts)
runs a `LanAdvertiser`: one DNS-SD service of type `_swarmllm._tcp.local.` whose TXT record
says who it is and where to dial it. A command started without `--initial-peers` calls
`discover()` (or `lan_initial_peers`, which adds the policy) and dials what it found.

The TXT record (RFC 6763 key=value strings; every value ASCII, at most 255 bytes a string):

    v=1                         format version of these keys
    id=12D3KooW...              the advertiser's libp2p peer id (base58)
    swarm=default               the swarm's name: swarms on one LAN are kept apart by it
    role=bootstrap|server       what the process is (informative)
    m=smollm2-135m[,...]        model ids it serves, comma separated (informative; may be empty)
    a0=/ip4/H/tcp/P/p2p/ID ...  up to MAX_LAN_ADDRESSES multiaddrs, a0..a7, each ending in /p2p/<id>

What it promises:
- `discover()` returns, within about `timeout` s, the multiaddrs of the peers of one swarm that
  answered on the LAN; it ends early, `settle` s after the first one. Only well-formed
  /ip4|ip6/HOST/tcp/PORT/p2p/ID multiaddrs whose ID is the TXT's `id`, with a HOST that is not
  loopback, unspecified or multicast, are returned; at most MAX_PEERS services are resolved,
  MAX_LAN_ADDRESSES addresses kept of each and MAX_DIAL_ADDRESSES returned in all. Whatever
  else arrives (malformed TXT, wrong types, oversized or non-ASCII values, a flood of
  services) is ignored and never raises; a machine where mDNS cannot run (no LAN interface,
  port 5353 refused) gets [] and a log line.
- mDNS is unauthenticated, so what it returns are hints to dial, nothing more: libp2p's
  handshake proves the peer id on connect, and every DHT record is signed and verified as
  ever. A liar on the LAN can make a node dial wrong addresses (beside the right ones: services
  are not merged by peer id, so naming a real peer's id hides nothing), or flood the answers
  until the bounds above cut the real ones off (the node then joins nothing, or starts a swarm
  of its own: mDNS cannot prevent that); it cannot impersonate a peer id.
- `LanAdvertiser.start()` advertises the non-loopback addresses among those given (none: it
  advertises nothing and says so); `stop()` sends the mDNS goodbye and closes, within a few
  seconds, and may be called twice. A node that cannot advertise keeps running (a warning).
- Interfaces: every non-loopback IPv4 interface of the machine, unless `interfaces` (their
  IPv4 addresses) says otherwise. IPv6 is not used for mDNS (the addresses may still be IPv6).
It does not decide what a command does with what it finds (`lan_initial_peers` holds that
policy: join what was found, or start a new swarm, or say that none was found), and it is
the only module that imports zeroconf.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence

from swarmllm.protocol.records import MODEL_ID_PATTERN, PEER_ID_PATTERN

logger = logging.getLogger(__name__)

SERVICE_TYPE = "_swarmllm._tcp.local."
TXT_FORMAT = "1"
DEFAULT_SWARM_NAME = "default"
DEFAULT_TIMEOUT = 2.5       # s a command without --initial-peers looks for a swarm (--lan-timeout)
DEFAULT_SETTLE = 0.5        # s discovery goes on after the first peer, for the others that answer
MAX_PEERS = 32              # services resolved in one discovery: an mDNS flood is cut here
MAX_LAN_ADDRESSES = 8       # multiaddrs kept of one peer (= protocol.records.MAX_ADDRESSES)
MAX_DIAL_ADDRESSES = 32     # addresses one discovery returns in all (what a node then dials)
MAX_MODELS = 8              # model ids kept of one peer
MAX_TXT_STRING = 255        # bytes of one TXT string (the DNS limit)
MAX_TXT_STRINGS = 32        # strings read of one TXT record
START_SECONDS = 5.0         # start(): registering, at most
STOP_SECONDS = 1.0          # stop(): the goodbye, then closing, at most this long each
SWARM_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
ROLES = ("bootstrap", "server")


class NoLanSwarmError(ConnectionError):
    """No peer of the swarm answered on the LAN (and the command cannot start one)."""


@dataclass(frozen=True)
class LanPeer:
    peer_id: str
    swarm_name: str
    role: str
    addresses: tuple[str, ...]  # well-formed, dialable-looking, each ending in /p2p/<peer_id>
    models: tuple[str, ...] = ()


# --- multiaddrs --------------------------------------------------------------------------
def parse_multiaddr(text: str, peer_id: str) -> Optional[str]:
    """`text` rebuilt in canonical form if it is /ip4|ip6/HOST/tcp/PORT/p2p/`peer_id` with a HOST
    another machine could dial (not loopback, unspecified, multicast or broadcast); else None."""
    if not isinstance(text, str) or len(text) > MAX_TXT_STRING:
        return None
    parts = text.split("/")
    if len(parts) != 7 or parts[0] != "" or parts[1] not in ("ip4", "ip6") or parts[3] != "tcp" or parts[5] != "p2p":
        return None
    try:
        host = ipaddress.IPv4Address(parts[2]) if parts[1] == "ip4" else ipaddress.IPv6Address(parts[2])
    except ValueError:
        return None
    if host.is_loopback or host.is_unspecified or host.is_multicast or str(host) == "255.255.255.255":
        return None
    if not (parts[4].isascii() and parts[4].isdigit() and len(parts[4]) <= 5 and 0 < int(parts[4]) < 65536):
        return None
    if parts[6] != peer_id or not re.match(PEER_ID_PATTERN, peer_id):
        return None
    return f"/{parts[1]}/{host}/tcp/{int(parts[4])}/p2p/{peer_id}"


def lan_addresses(addresses: Iterable[str], peer_id: str) -> list[str]:
    """The addresses worth advertising on a LAN: well-formed, not loopback, at most MAX_LAN_ADDRESSES."""
    out: list[str] = []
    for address in addresses:
        parsed = parse_multiaddr(address, peer_id)
        if parsed is not None and parsed not in out:
            out.append(parsed)
    return out[:MAX_LAN_ADDRESSES]


def check_swarm_name(name: str) -> str:
    if not isinstance(name, str) or not re.match(SWARM_NAME_PATTERN, name):
        raise ValueError(f"--swarm-name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a "
                         "letter or digit")
    return name


# --- TXT records (pure: what goes on the wire and what is believed of it) -----------------
def encode_txt(peer: LanPeer) -> bytes:
    """The TXT rdata advertising `peer` (length-prefixed key=value strings). ValueError for our own
    values that would not parse back (a bad swarm name, no address)."""
    check_swarm_name(peer.swarm_name)
    if peer.role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {peer.role!r}")
    addresses = lan_addresses(peer.addresses, peer.peer_id)
    if not addresses:
        raise ValueError("no LAN address to advertise")
    models = [m for m in peer.models if re.match(MODEL_ID_PATTERN, m)][:MAX_MODELS]
    items = [("v", TXT_FORMAT), ("id", peer.peer_id), ("swarm", peer.swarm_name), ("role", peer.role)]
    models_text = ",".join(models)
    while len("m=" + models_text) > MAX_TXT_STRING:  # keep whole ids only
        models = models[:-1]
        models_text = ",".join(models)
    items.append(("m", models_text))
    items += [(f"a{i}", address) for i, address in enumerate(addresses)]
    out = bytearray()
    for key, value in items:
        string = f"{key}={value}".encode("ascii")
        out += bytes([len(string)]) + string
    return bytes(out)


def decode_txt(raw: bytes) -> dict[str, str]:
    """key -> value of TXT rdata. Per RFC 6763 6.4 the first occurrence of a key counts; strings
    that are not ASCII key=value, empty keys, and everything past MAX_TXT_STRINGS are skipped."""
    items: dict[str, str] = {}
    if not isinstance(raw, (bytes, bytearray)):
        return items
    offset, strings = 0, 0
    while offset < len(raw) and strings < MAX_TXT_STRINGS:
        length = raw[offset]
        string = bytes(raw[offset + 1:offset + 1 + length])
        offset += 1 + length
        strings += 1
        if len(string) != length or b"=" not in string:
            continue
        key_bytes, value_bytes = string.split(b"=", 1)
        try:
            key, value = key_bytes.decode("ascii").lower(), value_bytes.decode("ascii")
        except UnicodeDecodeError:
            continue
        if key and key not in items and key.isprintable() and value.isprintable():
            items[key] = value
    return items


def peer_from_txt(items: Mapping[str, str]) -> Optional[LanPeer]:
    """The peer a TXT record describes, or None if it is not one this version can use: wrong
    format, bad peer id, swarm name or role, or no valid address. Bad addresses and model ids
    are dropped one by one."""
    try:
        if items.get("v") != TXT_FORMAT:
            return None
        peer_id, swarm_name, role = items.get("id", ""), items.get("swarm", ""), items.get("role", "")
        if not re.match(PEER_ID_PATTERN, peer_id) or not re.match(SWARM_NAME_PATTERN, swarm_name) \
                or role not in ROLES:
            return None
        addresses = lan_addresses((items[f"a{i}"] for i in range(MAX_LAN_ADDRESSES) if f"a{i}" in items), peer_id)
        if not addresses:
            return None
        models = tuple(m for m in items.get("m", "").split(",") if re.match(MODEL_ID_PATTERN, m))[:MAX_MODELS]
        return LanPeer(peer_id, swarm_name, role, tuple(addresses), models)
    except (TypeError, AttributeError):  # a mapping of something other than strings
        return None


def parse_txt(raw: bytes) -> Optional[LanPeer]:
    return peer_from_txt(decode_txt(raw))


# --- interfaces ---------------------------------------------------------------------------
def lan_interfaces() -> list[str]:
    """The IPv4 addresses of this machine's non-loopback interfaces (what mDNS runs on)."""
    import ifaddr  # zeroconf's own dependency

    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if ip.is_IPv4 and isinstance(ip.ip, str):
                address = ipaddress.IPv4Address(ip.ip)
                if not (address.is_loopback or address.is_unspecified) and ip.ip not in found:
                    found.append(ip.ip)
    return found


def _zeroconf(interfaces: Optional[Sequence[str]]):
    """An AsyncZeroconf on `interfaces` (default: lan_interfaces()), or None (logged) if mDNS cannot run here."""
    from zeroconf import IPVersion
    from zeroconf.asyncio import AsyncZeroconf

    chosen = list(interfaces) if interfaces is not None else lan_interfaces()
    if not chosen:
        logger.info("no non-loopback IPv4 interface: no LAN discovery")
        return None
    try:
        return AsyncZeroconf(interfaces=chosen, ip_version=IPVersion.V4Only)
    except (OSError, RuntimeError, ValueError) as e:
        logger.warning("mDNS cannot run on %s: %s", ", ".join(chosen), e)
        return None


# --- discovery ----------------------------------------------------------------------------
async def discover_peers(swarm_name: Optional[str] = DEFAULT_SWARM_NAME, timeout: float = DEFAULT_TIMEOUT, *,
                         settle: float = DEFAULT_SETTLE, interfaces: Optional[Sequence[str]] = None,
                         max_peers: int = MAX_PEERS) -> list[LanPeer]:
    """The valid peers that answered on the LAN within `timeout` s, of every swarm; it ends
    `settle` s after the first peer of `swarm_name` (of any swarm, if None) answered."""
    if swarm_name is not None:
        check_swarm_name(swarm_name)
    if timeout <= 0:
        return []
    from zeroconf import DNSQuestionType, ServiceStateChange
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    zc = _zeroconf(interfaces)
    if zc is None:
        return []
    found: list[LanPeer] = []  # one per service, in the order they answered
    wanted_found = asyncio.Event()
    names: set[str] = set()
    tasks: set[asyncio.Task] = set()

    async def resolve(name: str) -> None:
        try:
            info = AsyncServiceInfo(SERVICE_TYPE, name)
            if not await info.async_request(zc.zeroconf, max(1, int((deadline - loop.time()) * 1000)),
                                            question_type=DNSQuestionType.QM):
                return
            peer = parse_txt(info.text)
        except Exception as e:  # anything from the network: ignored
            logger.debug("ignoring LAN service %r: %s", name, e)
            return
        if peer is None:
            logger.debug("ignoring LAN service %r: its TXT record is not a swarmllm peer's", name)
            return
        # Not merged by peer id: a liar's service naming a real peer's id must not hide the real one.
        found.append(peer)
        logger.debug("LAN peer %s of swarm %r after %.3f s: %s", peer.peer_id, peer.swarm_name,
                     timeout - (deadline - loop.time()), ", ".join(peer.addresses))
        if swarm_name is None or peer.swarm_name == swarm_name:
            wanted_found.set()

    def on_change(zeroconf, service_type: str, name: str, state_change) -> None:
        if state_change is ServiceStateChange.Removed or name in names or len(names) >= max_peers:
            return
        names.add(name)
        logger.debug("LAN service %r seen after %.3f s", name, timeout - (deadline - loop.time()))
        task = loop.create_task(resolve(name))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    browser = None
    try:
        # QM questions only (zeroconf asks its first one QU): a unicast answer reaches one of the
        # sockets bound to port 5353 on the asking machine, which is often another mDNS stack's
        # (avahi, a node advertising there), so it would be lost; multicast answers reach them all.
        browser = AsyncServiceBrowser(zc.zeroconf, SERVICE_TYPE, handlers=[on_change],
                                      question_type=DNSQuestionType.QM)
        try:
            await asyncio.wait_for(wanted_found.wait(), timeout)
            await asyncio.sleep(max(0.0, min(settle, deadline - loop.time())))
        except asyncio.TimeoutError:
            pass
    except (OSError, RuntimeError) as e:
        logger.warning("LAN discovery failed: %s", e)
    finally:
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await _close(zc, browser)
    return found[:max_peers]


async def _close(zc, browser=None) -> None:
    try:
        if browser is not None:
            await asyncio.wait_for(browser.async_cancel(), STOP_SECONDS)
        await asyncio.wait_for(zc.async_close(), STOP_SECONDS)
    except (Exception, asyncio.TimeoutError) as e:  # closing must not raise: the sockets go with the process
        logger.debug("closing mDNS: %s", e or type(e).__name__)


async def discover(swarm_name: str = DEFAULT_SWARM_NAME, timeout: float = DEFAULT_TIMEOUT, *,
                   settle: float = DEFAULT_SETTLE, interfaces: Optional[Sequence[str]] = None) -> list[str]:
    """Multiaddrs of the peers of `swarm_name` that answered on the LAN within about `timeout` s."""
    return swarm_addresses(await discover_peers(swarm_name, timeout, settle=settle, interfaces=interfaces),
                           swarm_name)


def swarm_addresses(peers: Iterable[LanPeer], swarm_name: str) -> list[str]:
    """The distinct addresses of the peers of `swarm_name`, in the order found, at most MAX_DIAL_ADDRESSES."""
    addresses = dict.fromkeys(a for peer in peers if peer.swarm_name == swarm_name for a in peer.addresses)
    return list(addresses)[:MAX_DIAL_ADDRESSES]


async def lan_initial_peers(swarm_name: str, timeout: float, *, may_start: bool,
                            interfaces: Optional[Sequence[str]] = None) -> list[str]:
    """What a command started without --initial-peers dials: the swarm's peers found on the LAN;
    none found, [] (start a new swarm) if `may_start`, else NoLanSwarmError with what to do."""
    peers = await discover_peers(swarm_name, timeout, interfaces=interfaces)
    addresses = swarm_addresses(peers, swarm_name)
    if addresses or may_start:
        return addresses
    others = sorted({peer.swarm_name for peer in peers})
    other_text = f" (swarms seen there: {', '.join(others)}; choose one with --swarm-name)" if others else ""
    raise NoLanSwarmError(
        f"no swarm {swarm_name!r} was found on the local network within {timeout:g} s{other_text}. Pass "
        "--initial-peers MADDR (what `swarmllm bootstrap` or `swarmllm up` prints, or what an invite holds), "
        "start one on this network with `swarmllm up` or `swarmllm serve`, or wait longer with --lan-timeout")


# --- advertising --------------------------------------------------------------------------
class LanAdvertiser:
    """This node's mDNS service. `await start(...)` once its addresses are known; `await stop()`
    on every way out (it sends the goodbye, so browsers forget the node at once)."""

    def __init__(self, swarm_name: str = DEFAULT_SWARM_NAME, interfaces: Optional[Sequence[str]] = None):
        self.swarm_name = check_swarm_name(swarm_name)
        self.interfaces = interfaces
        self.advertised: Optional[LanPeer] = None  # what is on the LAN now
        self._zc = None
        self._info = None

    async def start(self, peer_id: str, addresses: Sequence[str], *, role: str,
                    models: Sequence[str] = ()) -> bool:
        """Advertise; False (logged) if there is nothing to advertise or mDNS cannot run here."""
        from zeroconf.asyncio import AsyncServiceInfo

        if self._zc is not None:
            raise RuntimeError("this LanAdvertiser is already advertising; stop() it first")
        peer = LanPeer(peer_id, self.swarm_name, role, tuple(lan_addresses(addresses, peer_id)), tuple(models))
        if not peer.addresses:
            logger.info("not advertising on the LAN: no non-loopback address among %s", ", ".join(addresses) or "none")
            return False
        hosts = list(dict.fromkeys(a.split("/")[2] for a in peer.addresses))
        first_port = int(peer.addresses[0].split("/")[4])
        info = AsyncServiceInfo(SERVICE_TYPE, f"{peer_id[:63]}.{SERVICE_TYPE}", port=first_port,
                                properties=encode_txt(peer), parsed_addresses=hosts,
                                server=f"swarmllm-{peer_id[-16:].lower()}.local.")
        zc = _zeroconf(self.interfaces)
        if zc is None:
            return False
        try:
            # No probing for a unique name (cooperating_responders): the name is the peer id, unique
            # unless someone lies, and a liar could answer the probes too; probing would only keep the
            # node off the LAN for 1-2 s more. The announcements go out in the background (3 in ~0.5 s).
            await asyncio.wait_for(zc.async_register_service(info, cooperating_responders=True), START_SECONDS)
        except (Exception, asyncio.TimeoutError) as e:  # the node runs on without the LAN, never dies of it
            logger.warning("could not advertise on the LAN: %s", e or type(e).__name__)
            await _close(zc)
            return False
        self._zc, self._info, self.advertised = zc, info, peer
        logger.info("advertising swarm %r on the LAN: %s", self.swarm_name, ", ".join(peer.addresses))
        return True

    async def stop(self) -> None:
        zc, info, self._zc, self._info, self.advertised = self._zc, self._info, None, None, None
        if zc is None:
            return
        try:
            await asyncio.wait_for(await zc.async_unregister_service(info), STOP_SECONDS)
        except (Exception, asyncio.TimeoutError) as e:
            logger.debug("mDNS goodbye: %s", e or type(e).__name__)
        await _close(zc)

    async def __aenter__(self) -> "LanAdvertiser":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()
