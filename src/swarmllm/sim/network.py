"""Where machines sit and what a message between two of them costs (pure).

Two models:
- `geo`: every machine and client has a point on the globe drawn around its region's centre
  (within `radius_km`); the round trip between two points is
      rtt = access_a + access_b + great-circle km * 2 * route_factor / 200 km per ms
  (light in fibre covers about 200 km per ms; real routes are longer than great circles), and a
  message of B bytes from a to b also takes B / min(up_a, down_b) on the wire.
- `relays`: what benchmarks/wan.py builds on one machine (harness/delayed.py): every node sits
  behind a delaying relay of one-way delay d, and a message into a node costs that node's d, a
  message out to the client the sending node's d (the client dialled it: the answer returns
  through its relay), and both are paced at that relay's rate (NodeGroup.link_mbps; none: unlimited).
In both, a hop costs `hop_overhead` more (encode, decode, framing, the p2pd daemons).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Region:
    name: str
    lat: float
    lon: float
    share: float = 1.0           # of machines (and clients) placed here
    access_ms: float = 5.0       # last-mile round trip each end adds


REGIONS = {
    "us-east": Region("us-east", 39.0, -77.5), "us-west": Region("us-west", 37.4, -122.0),
    "europe": Region("europe", 50.1, 8.7), "asia-east": Region("asia-east", 35.7, 139.7),
    "south-asia": Region("south-asia", 19.1, 72.9), "south-america": Region("south-america", -23.5, -46.6),
    "oceania": Region("oceania", -33.9, 151.2),
}


@dataclass
class Place:
    """Where one machine or client is."""

    region: str
    lat: float = 0.0
    lon: float = 0.0
    access_ms: float = 0.0
    delay: float = 0.0           # relays model: one-way seconds into this node
    up_bps: float = 1e12
    down_bps: float = 1e12


@dataclass
class Network:
    model: str = "geo"                    # "geo" or "relays"
    regions: dict[str, Region] = field(default_factory=lambda: dict(REGIONS))
    radius_km: float = 500.0
    route_factor: float = 1.6
    hop_overhead: float = 0.0016          # s per hop (measured: benchmarks/results/pipeline.md)
    loopback_rtt: float = 0.0005          # s, relays model: the round trip of the loopback itself

    def place(self, rng: random.Random, region: str, up_mbps: float = 1e6, down_mbps: float = 1e6,
              delay: float = 0.0, link_mbps: float = 1e6) -> Place:
        if self.model == "relays":
            return Place(region, delay=delay, up_bps=link_mbps * 1e6, down_bps=link_mbps * 1e6)
        centre = self.regions[region]
        bearing, distance = rng.uniform(0, 2 * math.pi), self.radius_km * math.sqrt(rng.random())
        lat = centre.lat + distance / 111.0 * math.cos(bearing)
        lon = centre.lon + distance / (111.0 * max(0.2, math.cos(math.radians(centre.lat)))) * math.sin(bearing)
        return Place(region, lat, lon, centre.access_ms * rng.uniform(0.5, 1.5), up_bps=up_mbps * 1e6,
                     down_bps=down_mbps * 1e6)

    def pick_region(self, rng: random.Random, shares: dict[str, float] | None = None) -> str:
        shares = shares or {name: r.share for name, r in self.regions.items()}
        names = sorted(shares)
        return rng.choices(names, weights=[shares[n] for n in names])[0]

    def rtt(self, a: Place, b: Place) -> float:
        """Round trip seconds between two places (what a ping measures)."""
        if self.model == "relays":
            return self.loopback_rtt + 2 * (a.delay + b.delay)
        return (a.access_ms + b.access_ms + great_circle_km(a, b) * 2 * self.route_factor / 200.0) / 1000.0

    def message(self, src: Place, dst: Place, nbytes: int, to_client: bool = False) -> float:
        """Seconds for one hop's message from src to dst, the hop's own overhead included."""
        if self.model == "relays":   # the relay in front of the node dialled paces and delays both directions
            relay = src if to_client else dst
            return self.loopback_rtt / 2 + relay.delay + nbytes * 8 / relay.down_bps + self.hop_overhead
        wire = nbytes * 8 / min(src.up_bps, dst.down_bps)
        return self.rtt(src, dst) / 2 + wire + self.hop_overhead


def great_circle_km(a: Place, b: Place) -> float:
    la, lb = math.radians(a.lat), math.radians(b.lat)
    dlat, dlon = lb - la, math.radians(b.lon - a.lon)
    h = math.sin(dlat / 2) ** 2 + math.cos(la) * math.cos(lb) * math.sin(dlon / 2) ** 2
    return 2 * 6371.0 * math.asin(min(1.0, math.sqrt(h)))
