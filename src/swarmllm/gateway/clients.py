"""Who is asking: the client address behind a request, and the key its limits are kept under.

Pure functions, no I/O. The direct peer of the TCP connection is the only address the
gateway knows for sure; forwarding headers are claims anyone can write. So
`client_address` honours one forwarding header (X-Forwarded-For, or RFC 7239 Forwarded:
the operator names the one their proxy writes, since a proxy that writes one passes the
other through untouched, spoofable) only when the direct peer is in a trusted network,
and then walks the chain from the right, skipping trusted proxies: the right-most
untrusted address is the client. With no trusted networks (the default) the headers are
ignored. An entry that does not parse stops the walk at the last address that did.

`address_key` groups IPv6 addresses by /64 (one subscriber usually holds a whole /64, so
per-address limits would be free to dodge) and keeps IPv4 per address.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable, Optional, Sequence, Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

FORWARDED_HEADERS = ("x-forwarded-for", "forwarded")
UNKNOWN = "unknown"


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """'10.0.0.0/8,::1' -> networks (a bare address is a /32 or /128); ValueError with a clear sentence."""
    networks = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{part!r} is not an IP network; write CIDRs such as 10.0.0.0/8 or ::1/128, "
                             "separated by commas") from None
    return tuple(networks)


def parse_address(text: str) -> Optional[IPAddress]:
    """An address from a header or the peer: '1.2.3.4', '1.2.3.4:80', '[::1]:80', '::1'; None if not one.
    IPv4-mapped IPv6 addresses are returned as IPv4, so a dual-stack socket does not split a client in two."""
    text = text.strip().strip('"').strip()
    if text.startswith("["):
        text = text[1:text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.split(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def x_forwarded_for(values: Iterable[str]) -> list[str]:
    """The hops of X-Forwarded-For header lines, left (first) to right (nearest)."""
    return [hop for value in values for hop in value.split(",")]


def forwarded_for(values: Iterable[str]) -> list[str]:
    """The `for=` nodes of RFC 7239 Forwarded header lines, left to right ('' where an element has none)."""
    hops = []
    for value in values:
        for element in value.split(","):
            node = ""
            for pair in element.split(";"):
                name, _, content = pair.partition("=")
                if name.strip().lower() == "for":
                    node = content
            hops.append(node)
    return hops


def forwarded_chain(header: str, values: Iterable[str]) -> list[str]:
    return forwarded_for(values) if header == "forwarded" else x_forwarded_for(values)


def _trusted(address: IPAddress, trusted: Sequence[IPNetwork]) -> bool:
    return any(address.version == network.version and address in network for network in trusted)


def client_address(peer: Optional[str], chain: Sequence[str], trusted: Sequence[IPNetwork]) -> str:
    """The client's address: the direct peer, or, when the peer is a trusted proxy, the right-most
    untrusted hop of `chain` (the forwarding header's hops, left to right)."""
    current = parse_address(peer) if peer else None
    if current is None:
        return UNKNOWN
    if not _trusted(current, trusted):
        return str(current)
    for hop in reversed(chain):
        address = parse_address(hop)
        if address is None:
            break
        current = address
        if not _trusted(address, trusted):
            break
    return str(current)


def address_key(address: str) -> str:
    """The key an address's limits are kept under: 'ip:1.2.3.4', or the /64 of an IPv6 address."""
    parsed = parse_address(address)
    if parsed is None:
        return f"ip:{UNKNOWN}"
    if isinstance(parsed, ipaddress.IPv6Address):
        return f"ip:{ipaddress.IPv6Network((parsed, 64), strict=False)}"
    return f"ip:{parsed}"
