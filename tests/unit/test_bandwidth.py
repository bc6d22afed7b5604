"""The bandwidth caps' pure parts: the token bucket on a fake clock, the frame pacing, the rate parser."""

from __future__ import annotations

import argparse
import asyncio

import pytest

from swarmllm.cli_parser import bandwidth_rate
from swarmllm.swarm.bandwidth import TokenBucket, Traffic, chunks, wire_budget


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def run(coro):
    return asyncio.run(coro)


def test_bucket_holds_the_rate_over_a_long_run():
    clock = FakeClock()
    bucket = TokenBucket(1_000_000, burst_seconds=0.1, clock=clock, sleep=clock.sleep)

    async def send(total: int, piece: int):
        for _ in range(total // piece):
            await bucket.take(piece)

    run(send(1_250_000, 16_384 - 16_384 % 8 or 1))  # 10 s worth at 125 kB/s
    # 10 s of budget, less the 0.1 s burst it started with (pieces do not divide exactly: within one piece)
    assert clock.now == pytest.approx((1_250_000 - 12_500) / 125_000, abs=0.14)


def test_bucket_any_window_stays_within_rate_plus_burst():
    clock = FakeClock()
    bucket = TokenBucket(800_000, burst_seconds=0.05, clock=clock, sleep=clock.sleep)
    stamps: list[tuple[float, int]] = []

    async def send():
        for _ in range(2000):
            await bucket.take(1000)
            stamps.append((clock.now, 1000))

    run(send())
    for i, (t0, _) in enumerate(stamps):
        in_window = sum(n for t, n in stamps[i:] if t < t0 + 1.0)
        assert in_window <= 100_000 * 1.05 + 1000


def test_a_request_larger_than_the_burst_completes_and_is_paid_off():
    clock = FakeClock()
    bucket = TokenBucket(80_000, burst_seconds=0.1, clock=clock, sleep=clock.sleep)  # 10 kB/s, 1 kB burst
    run(bucket.take(50_000))  # no deadlock: goes into debt
    assert clock.now == 0.0
    run(bucket.take(1000))  # waits the 50 kB off first
    assert clock.now == pytest.approx(5.0, abs=0.01)


def test_refill_is_capped_at_the_burst():
    clock = FakeClock()
    bucket = TokenBucket(80_000, burst_seconds=0.1, clock=clock, sleep=clock.sleep)
    clock.now = 1000.0  # idle a long time: saves only 0.1 s worth
    run(bucket.take(1000))
    assert bucket.wait_time(1000) == pytest.approx(0.1)


def test_bad_rates_are_refused_with_a_sentence():
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(0)
    with pytest.raises(ValueError, match="at least 8 kbit/s"):
        Traffic(max_upload_bps=100)


def test_traffic_counts_and_uncapped_has_no_buckets():
    traffic = Traffic()
    assert traffic.upload is None and traffic.download is None
    run(traffic.pace_send(10))
    run(traffic.pace_recv(7))
    assert traffic.to_json() == {"bytes_sent": 10, "bytes_received": 7, "max_upload_bps": None,
                                 "max_download_bps": None}
    capped = Traffic(max_upload_bps=1e6, max_download_bps=2e6)
    assert capped.upload.rate_bps == pytest.approx(wire_budget(1e6))
    assert capped.download.rate_bps == pytest.approx(wire_budget(2e6))
    assert wire_budget(1e6) < 1e6  # the wire's overhead is paid from the cap


def test_chunks_cover_the_buffer():
    assert chunks(0) == [(0, 0)]
    assert chunks(5, 2) == [(0, 2), (2, 4), (4, 5)]
    pieces = chunks(3 * 2**20 + 1)
    assert pieces[0][0] == 0 and pieces[-1][1] == 3 * 2**20 + 1
    assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))


@pytest.mark.parametrize("text,bps", [("1Mbit", 1e6), ("500kbit", 5e5), ("1.5Mbit/s", 1.5e6), ("2MB", 16e6),
                                      ("250KB", 2e6), ("64000", 64000.0), ("10 mbps", 1e7), ("1Gbit", 1e9),
                                      # b = bit, B = byte, whatever the prefix's case ("1Mb" was once 8 Mbit/s)
                                      ("1Mb", 1e6), ("1mb", 1e6), ("1MBps", 8e6), ("1MB/s", 8e6), ("8bps", 8.0)])
def test_rate_parser_accepts(text, bps):
    assert bandwidth_rate(text) == pytest.approx(bps)


@pytest.mark.parametrize("text", ["", "fast", "1Mbyte", "-1Mbit", "0", "Mbit", "1.2.3Mbit", "inf", "nan"])
def test_rate_parser_refuses_with_a_sentence(text):
    with pytest.raises(argparse.ArgumentTypeError, match="expected a rate such as 1Mbit"):
        bandwidth_rate(text)


def test_frame_stream_paces_a_large_frame_in_chunks_and_counts_every_byte():
    import socket

    from swarmllm.swarm.node import FrameStream

    async def main():
        left, right = socket.socketpair()
        r1, w1 = await asyncio.open_connection(sock=left)
        r2, w2 = await asyncio.open_connection(sock=right)
        clock = FakeClock()
        sender_traffic = Traffic(max_upload_bps=8e6)
        sender_traffic.upload = TokenBucket(8e6, 0.01, clock=clock, sleep=clock.sleep)  # 1 MB/s, 10 kB burst
        receiver_traffic = Traffic(max_download_bps=8e6)
        receiver_traffic.download = TokenBucket(8e6, 0.01, clock=clock, sleep=clock.sleep)
        sender, receiver = FrameStream(r1, w1, "a", sender_traffic), FrameStream(r2, w2, "b", receiver_traffic)
        frame = bytes(range(256)) * 4096  # 1 MiB: 64 chunks, each waited for
        got, _ = await asyncio.gather(receiver.recv(), sender.send(frame))
        sender.close()
        receiver.close()
        return got, sender_traffic, receiver_traffic, clock.now

    got, sent, received, fake_seconds = run(main())
    assert got == bytes(range(256)) * 4096
    assert sent.bytes_sent == received.bytes_received == 8 + 2**20
    # both buckets share the fake clock: ~1 s of budget each, paid while the other waits (not zero: paced)
    assert 1.0 <= fake_seconds <= 2.2
