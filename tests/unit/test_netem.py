"""The WAN-emulating relay on loopback: delay per direction, bytes intact and in order, rate cap."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import pytest

from swarmllm.harness.netem import PROFILES, LinkProfile, Relay, node_profiles

# The machine is shared and asyncio timers add ~1 ms per direction: generous upper bounds.
SLACK_SECONDS = 0.03


async def _echo_server():
    async def echo(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()
    return await asyncio.start_server(echo, "127.0.0.1", 0)


async def _round_trips(profile: LinkProfile, rounds: int = 5) -> list[float]:
    server = await _echo_server()
    relay = await Relay.start("127.0.0.1", server.sockets[0].getsockname()[1], profile)
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    times = []
    for i in range(rounds):
        started = time.perf_counter()
        writer.write(b"ping%d" % i)
        assert await reader.readexactly(5) == b"ping%d" % i
        times.append(time.perf_counter() - started)
    writer.close()
    await relay.close()
    server.close()
    return times


@pytest.mark.parametrize("name", ["city", "continent"])
def test_round_trip_takes_the_profile_rtt(name):
    profile = PROFILES[name]
    times = asyncio.run(_round_trips(profile))
    rtt = profile.rtt_ms / 1000
    assert min(times) >= rtt
    assert sorted(times)[len(times) // 2] < rtt + SLACK_SECONDS


def test_lan_adds_almost_nothing():
    assert sorted(asyncio.run(_round_trips(PROFILES["lan"])))[2] < 0.01


async def _stream_through(profile: LinkProfile, payload: bytes) -> tuple[bytes, float, Relay]:
    received = bytearray()
    done = asyncio.Event()

    async def sink(reader, writer):
        while data := await reader.read(65536):
            received.extend(data)
        done.set()
        writer.close()

    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    relay = await Relay.start("127.0.0.1", server.sockets[0].getsockname()[1], profile)
    _, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    started = time.perf_counter()
    for offset in range(0, len(payload), 50_000):  # in pieces, as a real sender writes
        writer.write(payload[offset:offset + 50_000])
        await writer.drain()
    writer.write_eof()
    await asyncio.wait_for(done.wait(), 30)
    elapsed = time.perf_counter() - started
    writer.close()
    await relay.close()
    server.close()
    return bytes(received), elapsed, relay


def test_bytes_arrive_intact_in_order_at_the_capped_rate():
    payload = os.urandom(1_000_000)
    profile = LinkProfile("test", rtt_ms=10, rate_mbit=40)  # 5 MB/s: 1 MB takes 0.2 s + 5 ms
    received, elapsed, relay = asyncio.run(_stream_through(profile, payload))
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    assert relay.bytes_in == len(payload) and relay.connections == 1
    expected = len(payload) / profile.bytes_per_second + profile.one_way_seconds
    assert expected * 0.95 <= elapsed < expected * 1.5 + SLACK_SECONDS


def test_node_profiles():
    assert [p.name for p in node_profiles("mixed", 4)] == ["city", "continent", "intercontinental", "city"]
    assert [p.name for p in node_profiles("continent", 2)] == ["continent", "continent"]
    assert PROFILES["intercontinental"].one_way_seconds == pytest.approx(0.06)
    with pytest.raises(ValueError, match="unknown network profile 'moon'"):
        node_profiles("city,moon", 2)


class _EchoFrames:
    """An in-memory frame stream whose far end echoes every frame back."""

    def __init__(self):
        self.remote_peer_id, self.closed, self.sent = "far", False, []
        self._back: asyncio.Queue = asyncio.Queue()

    async def send(self, frame):
        self.sent.append(frame)
        await self._back.put(frame)

    async def recv(self):
        frame = await self._back.get()
        if frame is None:
            raise ConnectionError("closed")
        return frame

    def close(self):
        self.closed = True
        self._back.put_nowait(None)


def test_delayed_stream_adds_the_clients_last_mile_both_ways_and_keeps_order():
    from swarmllm.harness.delayed import DelayedStream

    async def run():
        inner = _EchoFrames()
        stream = DelayedStream(inner, PROFILES["continent"])
        started = time.perf_counter()
        for i in range(3):
            await stream.send(b"frame%d" % i)
        got = [await stream.recv() for _ in range(3)]
        elapsed = time.perf_counter() - started
        await stream.send(b"last")
        stream.close()  # queued frames still leave before the stream closes
        with pytest.raises(ConnectionError):
            await stream.send(b"after close")
        for _ in range(100):
            if inner.closed:
                break
            await asyncio.sleep(0.01)
        return got, elapsed, inner
    got, elapsed, inner = asyncio.run(run())
    assert got == [b"frame0", b"frame1", b"frame2"]
    assert PROFILES["continent"].rtt_ms / 1000 <= elapsed < PROFILES["continent"].rtt_ms / 1000 + SLACK_SECONDS
    assert inner.sent[-1] == b"last" and inner.closed
