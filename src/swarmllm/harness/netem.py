"""WAN emulation on one machine: a TCP relay that delays and rate-limits what passes through.

Kernel netem needs root and the qdisc module, neither of which test machines reliably have,
so this is the userspace equivalent. A `Relay` listens on a port and forwards every
connection to a target (a node's real listening port); the node announces the relay's
address (`swarmllm serve --announce`), so peers and clients that dial it pass through the
relay. Each direction of each connection is a `_Link`: bytes leave it in order, after the
serialization time at the profile's rate (a token bucket with no burst) plus the one-way
delay (RTT / 2; waits under 1 ms are skipped). So a request and its reply through one relay take at least the profile's
RTT plus size / rate each way.

A client's own last mile (a distant client) is `harness.delayed.DelayedSwarm`: it wraps the
frame streams the client opens in the same delays and pacing, in its own process, without a relay.

What it models: a node's last-mile link, for connections dialed to it. A connection that a
node dials itself goes through the *other* side's relay, so the delay between two nodes is
that of whichever one was dialed (the same either way when all nodes share a profile). It
does not model loss, jitter or a bandwidth shared between connections (each connection gets
the full rate). Delays are asyncio timers: expect ~1 ms of extra delay per direction.

Pure asyncio and the standard library (no torch, no hivemind), so relay processes start fast:

    python -m swarmllm.harness.netem --listen 127.0.0.1:4001 --target 127.0.0.1:4000 --profile continent
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from dataclasses import dataclass
from typing import Optional

from swarmllm.harness.processes import READY_MARKER

logger = logging.getLogger(__name__)

CHUNK_BYTES = 16 * 1024           # read size; at 20 Mbit/s one chunk serializes in 6.6 ms
MAX_QUEUED_CHUNKS = 64            # in flight per direction (1 MiB) before the sender is slowed down
MIN_DELAY_SECONDS = 0.001         # asyncio timers cannot wait less (epoll counts in ms): shorter waits are skipped


@dataclass(frozen=True)
class LinkProfile:
    """One node's link: round-trip delay and rate (each direction)."""

    name: str
    rtt_ms: float
    rate_mbit: Optional[float] = None  # None: no cap

    @property
    def one_way_seconds(self) -> float:
        return self.rtt_ms / 2000

    @property
    def bytes_per_second(self) -> Optional[float]:
        return None if self.rate_mbit is None else self.rate_mbit * 1e6 / 8


PROFILES = {
    profile.name: profile for profile in (
        LinkProfile("lan", 0.2, 1000),          # same rack/room: no measurable delay
        LinkProfile("city", 10, 100),           # home fibre to a peer in the same metro area
        LinkProfile("continent", 40, 50),       # across Europe or the US
        LinkProfile("intercontinental", 120, 20),  # e.g. Europe <-> US west coast / Asia
    )
}
# A swarm whose nodes differ: node i gets MIXED[i % 3].
MIXED = ("city", "continent", "intercontinental")


def node_profiles(spec: str, n_nodes: int) -> list[LinkProfile]:
    """Profiles for n nodes: a profile name for all of them, "mixed", or comma-separated names."""
    names = list(MIXED) if spec == "mixed" else spec.split(",")
    unknown = [n for n in names if n not in PROFILES]
    if unknown:
        raise ValueError(f"unknown network profile {unknown[0]!r}; use one of {', '.join(PROFILES)}, or mixed")
    return [PROFILES[names[i % len(names)]] for i in range(n_nodes)]


class Pacer:
    """When bytes given to one direction of a link arrive: serialized at the rate, one after
    another, then the one-way delay. Departures never decrease, so arrivals stay in order."""

    def __init__(self, profile: LinkProfile):
        self.profile = profile
        self._free_at = 0.0  # when the link has finished serializing what it was given

    def arrival(self, nbytes: int, now: float) -> float:
        self._free_at = max(now, self._free_at)
        if nbytes and self.profile.bytes_per_second:
            self._free_at += nbytes / self.profile.bytes_per_second
        return self._free_at + self.profile.one_way_seconds


async def sleep_until(due: float) -> None:
    wait = due - asyncio.get_running_loop().time()
    if wait >= MIN_DELAY_SECONDS:
        await asyncio.sleep(wait)


class _Link:
    """One direction of a relayed connection: delays and paces bytes, keeps their order."""

    def __init__(self, profile: LinkProfile):
        self.profile = profile
        self.bytes = 0
        self._pacer = Pacer(profile)

    async def run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Until EOF (passed on) or an error on either side; then both halves stop."""
        queue: asyncio.Queue = asyncio.Queue(MAX_QUEUED_CHUNKS)
        tasks = [asyncio.create_task(self._accept(reader, queue)), asyncio.create_task(self._deliver(queue, writer))]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, queue: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        while True:
            chunk = await reader.read(CHUNK_BYTES)
            await queue.put((self._pacer.arrival(len(chunk), loop.time()), chunk))
            if not chunk:  # EOF travels with the same delay
                return

    async def _deliver(self, queue: asyncio.Queue, writer: asyncio.StreamWriter) -> None:
        while True:
            due, chunk = await queue.get()
            await sleep_until(due)
            if not chunk:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(chunk)
            self.bytes += len(chunk)
            await writer.drain()


class Relay:
    """Accepts connections on (host, port) and forwards them to target through two `_Link`s."""

    def __init__(self, target_host: str, target_port: int, profile: LinkProfile):
        self.target_host, self.target_port, self.profile = target_host, target_port, profile
        self.bytes_in = 0   # towards the target (e.g. requests to the node)
        self.bytes_out = 0  # back from the target
        self.connections = 0
        self._server: Optional[asyncio.AbstractServer] = None
        self._tasks: set[asyncio.Task] = set()

    @classmethod
    async def start(cls, target_host: str, target_port: int, profile: LinkProfile | str,
                    host: str = "127.0.0.1", port: int = 0) -> "Relay":
        relay = cls(target_host, target_port, PROFILES[profile] if isinstance(profile, str) else profile)
        relay._server = await asyncio.start_server(relay._serve, host, port)
        return relay

    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1]

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())
        self.connections += 1
        target_writer = None
        inbound, outbound = _Link(self.profile), _Link(self.profile)
        try:
            target_reader, target_writer = await asyncio.open_connection(self.target_host, self.target_port)
            links = [asyncio.create_task(inbound.run(client_reader, target_writer)),
                     asyncio.create_task(outbound.run(target_reader, client_writer))]
            try:
                await asyncio.gather(*links)
            finally:
                for link in links:
                    link.cancel()
        except (ConnectionError, OSError) as e:
            logger.debug("relayed connection ended: %s", e)
        except asyncio.CancelledError:  # the relay is closing; end quietly (nobody awaits this task's result)
            pass
        finally:
            self.bytes_in += inbound.bytes
            self.bytes_out += outbound.bytes
            for writer in (client_writer, target_writer):
                if writer is not None:
                    writer.close()
            self._tasks.discard(asyncio.current_task())

    async def close(self) -> None:
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Delaying, rate-limiting TCP relay (WAN emulation).")
    parser.add_argument("--listen", required=True, help="HOST:PORT to accept connections on")
    parser.add_argument("--target", required=True, help="HOST:PORT to forward them to")
    parser.add_argument("--profile", choices=sorted(PROFILES), required=True)
    args = parser.parse_args(argv)

    async def run() -> None:
        (host, port), (target_host, target_port) = _host_port(args.listen), _host_port(args.target)
        relay = await Relay.start(target_host, target_port, args.profile, host, port)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        print(READY_MARKER + json.dumps({"role": "relay", "port": relay.port, "target": args.target,
                                         "profile": args.profile}), flush=True)
        await stop.wait()
        print(f"relay {args.profile} {args.listen} -> {args.target}: {relay.connections} connections, "
              f"{relay.bytes_in} bytes in, {relay.bytes_out} bytes out", flush=True)
        await relay.close()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
