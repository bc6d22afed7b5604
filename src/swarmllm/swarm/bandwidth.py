"""Bandwidth caps on a node's own stream traffic: one token bucket per direction, shared by all streams.

What it promises:
- `TokenBucket(rate_bps, burst_seconds)`: `await bucket.take(n)` returns once `n` bytes fit in a budget
  refilled at `rate_bps` bits per second; the bucket holds at most `burst_seconds` of budget, so over
  any window of W seconds at most `rate * (W + burst_seconds)` bits pass. Requests are served in order
  (a waiting large request is not starved by small ones). The clock and the sleep are injectable, so
  the logic is tested without a network (tests/unit/test_bandwidth.py).
- `Traffic`: a node's counters (`bytes_sent`, `bytes_received`: stream bytes including the frame
  length prefixes) and its two buckets; `pace_send` / `pace_recv` cut a frame into chunks of at most
  CHUNK_BYTES so that a megabyte frame is paced, not sent in one burst after a long wait. A cap of
  None is no bucket at all: counting only.
- `wire_budget(rate_bps)`: the payload rate a wire cap allows, after the measured overhead of TCP/IP,
  Noise and yamux framing (benchmarks/bandwidth_cap.py measured WIRE_OVERHEAD), so that the cap
  holds on the wire, which is where a volunteer's link sees it.
What it does not do: cap the DHT's own maintenance traffic (p2pd's Kademlia RPCs, small: see
docs/bandwidth.md for the measured rate), nor pace anything outside FrameStream.
The reading side paces its reads: a node that reads slower lets TCP's window close on the sender,
which is how a download cap holds end to end.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Optional

CHUNK_BYTES = 16 * 1024          # a large frame is paced in pieces of this size
DEFAULT_BURST_SECONDS = 0.1      # the budget a bucket can save up (keeps any ~1 s window within ~10%)
# Wire bytes per stream-payload byte at a 1 Mbit/s cap, measured by benchmarks/bandwidth_cap.py: TCP/IP, Noise and
# yamux framing (~6%), the ACKs of the other direction, and the DHT's uncapped maintenance (~0.1 Mbit/s), which
# at 1 Mbit/s are ~20% more. Fixed shares weigh less at higher caps, so there the wire stays a little under the cap.
WIRE_OVERHEAD = 1.28
MIN_RATE_BPS = 8_000.0           # below 1 kB/s a node cannot answer a step before its client times out


def wire_budget(rate_bps: float, overhead: float = WIRE_OVERHEAD) -> float:
    """The payload bits per second that keep the wire rate at `rate_bps`."""
    return rate_bps / overhead


class TokenBucket:
    """A byte budget refilled at `rate_bps` bits per second, holding at most `burst_seconds` of it."""

    def __init__(self, rate_bps: float, burst_seconds: float = DEFAULT_BURST_SECONDS,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        if not rate_bps > 0:
            raise ValueError(f"a bandwidth cap must be positive, got {rate_bps} bit/s")
        self.rate_bps = float(rate_bps)
        self.bytes_per_second = self.rate_bps / 8
        self.capacity = max(self.bytes_per_second * burst_seconds, 1.0)
        self._clock, self._sleep = clock, sleep
        self._level = self.capacity
        self._stamp = clock()
        self._lock = asyncio.Lock()  # in-order service: one waiter refills and sleeps at a time

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._stamp) * self.bytes_per_second)
        self._stamp = now

    def wait_time(self, n: int) -> float:
        """Seconds until `n` bytes fit (0: now). `n` above the capacity waits for a full bucket and
        then goes into debt, so a request larger than the burst still completes."""
        self._refill()
        need = min(float(n), self.capacity)
        return 0.0 if self._level >= need else (need - self._level) / self.bytes_per_second

    async def take(self, n: int) -> None:
        """Wait until `n` bytes may pass, then spend them."""
        if n <= 0:
            return
        async with self._lock:
            delay = self.wait_time(n)
            if delay > 0:  # one sleep: under the lock nobody else spends meanwhile (no loop on float dust)
                await self._sleep(delay)
                self._refill()
            self._level -= n  # may go negative for n > capacity: the next request waits it off


@dataclass
class Traffic:
    """A node's stream traffic: counters and caps (bits per second; None = no cap)."""

    max_upload_bps: Optional[float] = None
    max_download_bps: Optional[float] = None
    bytes_sent: int = 0
    bytes_received: int = 0
    burst_seconds: float = DEFAULT_BURST_SECONDS
    overhead: float = WIRE_OVERHEAD
    upload: Optional[TokenBucket] = field(default=None, init=False, repr=False)
    download: Optional[TokenBucket] = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("max_upload_bps", "max_download_bps"):
            rate = getattr(self, name)
            if rate is not None and not rate >= MIN_RATE_BPS:
                raise ValueError(f"--{name[:-4].replace('_', '-')} must be at least {MIN_RATE_BPS / 1000:.0f} kbit/s "
                                 f"(got {rate:g} bit/s): slower, a node cannot answer a step in time")
        if self.max_upload_bps is not None:
            self.upload = TokenBucket(wire_budget(self.max_upload_bps, self.overhead), self.burst_seconds)
        if self.max_download_bps is not None:
            self.download = TokenBucket(wire_budget(self.max_download_bps, self.overhead), self.burst_seconds)

    def to_json(self) -> dict:
        return {"bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received,
                "max_upload_bps": self.max_upload_bps, "max_download_bps": self.max_download_bps}

    async def pace_send(self, n: int) -> None:
        """Account `n` bytes about to be written (callers write in chunks of `chunks(n)`)."""
        if self.upload is not None:
            await self.upload.take(n)
        self.bytes_sent += n

    async def pace_recv(self, n: int) -> None:
        """Wait before reading `n` more bytes (the unread ones stay in TCP's window), then count them."""
        if self.download is not None:
            await self.download.take(n)
        self.bytes_received += n


def chunks(n: int, size: int = CHUNK_BYTES) -> list[tuple[int, int]]:
    """[start, end) pieces of a buffer of `n` bytes, each at most `size` long."""
    return [(i, min(i + size, n)) for i in range(0, n, size)] or [(0, 0)]
