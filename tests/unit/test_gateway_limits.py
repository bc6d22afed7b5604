"""The gateway's fair-use policies alone (gateway/limits.py), on an injected clock."""

from __future__ import annotations

import asyncio
import tracemalloc

import pytest

from swarmllm.gateway.limits import (
    Admission, ClientBusyError, ClientSlots, Limits, RateLimiter, SaturatedError, Ticket, declared_tokens,
)

LIMITS = Limits(requests_per_minute=3, tokens_per_minute=1000, concurrency=2)


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_requests_per_minute_then_retry_after_then_allowed_again():
    clock = Clock(6000.0)  # the start of a fixed window
    limiter = RateLimiter(clock=clock)
    assert all(isinstance(limiter.admit("a", 1, LIMITS), Ticket) for _ in range(3))
    wait = limiter.admit("a", 1, LIMITS)
    assert isinstance(wait, float) and 0 < wait <= 120
    assert isinstance(limiter.admit("b", 1, LIMITS), Ticket)  # other clients are not affected
    clock.now += wait
    assert isinstance(limiter.admit("a", 1, LIMITS), Ticket)  # the wait it announced was enough


def test_the_window_slides_over_a_fixed_window_boundary():
    clock = Clock(6000.0 + 59.0)  # late in a window
    limiter = RateLimiter(clock=clock)
    for _ in range(3):
        assert isinstance(limiter.admit("a", 1, LIMITS), Ticket)
    clock.now += 2.0  # just into the next fixed window: the last minute still holds 3 requests
    assert not isinstance(limiter.admit("a", 1, LIMITS), Ticket)
    clock.now += 60.0  # a whole minute later: free again
    assert isinstance(limiter.admit("a", 1, LIMITS), Ticket)


def test_tokens_per_minute_and_a_lone_big_request_passes():
    clock = Clock(6000.0)
    limiter = RateLimiter(clock=clock)
    assert isinstance(limiter.admit("a", 5000, LIMITS), Ticket)  # alone in its window: allowed
    assert not isinstance(limiter.admit("a", 10, LIMITS), Ticket)  # but then nothing else this minute
    assert isinstance(limiter.admit("b", 600, LIMITS), Ticket)
    assert isinstance(limiter.admit("b", 400, LIMITS), Ticket)
    wait = limiter.admit("b", 1, LIMITS)
    assert isinstance(wait, float) and wait > 0


def test_settle_charges_the_real_token_count():
    clock = Clock(6000.0)
    limiter = RateLimiter(clock=clock)
    ticket = limiter.admit("a", 100, LIMITS)
    assert limiter.settle(ticket, 50, LIMITS) == 0  # cheaper than declared: refunded
    assert isinstance(limiter.admit("a", 950, LIMITS), Ticket)  # 50 + 950 = the allowance exactly
    ticket = limiter.admit("c", 10, LIMITS)
    other = limiter.admit("c", 10, LIMITS)
    assert limiter.settle(other, 2000, LIMITS) > 0  # the prompt was far bigger than declared: refused now
    assert limiter.settle(ticket, 10, LIMITS) == 0
    assert not isinstance(limiter.admit("c", 1, LIMITS), Ticket)  # and the real count stays charged


def test_idle_keys_expire_and_memory_is_capped_for_100k_addresses():
    clock = Clock(6000.0)
    limiter = RateLimiter(max_keys=1000, clock=clock)
    limiter.admit("old", 1, LIMITS)
    clock.now += 130.0  # more than two fixed windows later: nothing of "old" counts any more
    limiter.admit("new", 1, LIMITS)
    assert len(limiter) == 1

    tracemalloc.start()
    for i in range(1000):
        limiter.admit(f"ip:10.0.{i // 256}.{i % 256}", 1, LIMITS)
    at_cap = tracemalloc.get_traced_memory()[0]
    for i in range(100_000):
        limiter.admit(f"ip:10.{i // 65536}.{(i // 256) % 256}.{i % 256}", 1, LIMITS)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(limiter) == 1000
    assert after - at_cap < 50_000, f"memory grew by {after - at_cap} bytes past the key cap"
    # The newest keys survive eviction, the oldest went first.
    assert not isinstance(limiter.admit("ip:10.1.134.159", 1, Limits(1, 1000, 1)), Ticket)  # i = 99_999


def test_declared_tokens_counts_characters_and_max_tokens():
    assert declared_tokens(400, 16, 512) == 116
    assert declared_tokens(0, None, 512) == 512


def test_client_slots_cap_one_key_and_forget_it_at_zero():
    slots = ClientSlots()
    slots.take("a", 2)
    slots.take("a", 2)
    with pytest.raises(ClientBusyError):
        slots.take("a", 2)
    slots.take("b", 2)  # another client is still admitted
    slots.release("a")
    slots.take("a", 2)
    for key in ("a", "a", "b"):
        slots.release(key)
    assert len(slots) == 0 and slots.in_flight("a") == 0


def test_admission_queue_is_bounded():
    async def scenario():
        admission = Admission(max_active=1, max_queue=1)
        await admission.acquire()
        waiter = asyncio.ensure_future(admission.acquire())
        await asyncio.sleep(0)
        with pytest.raises(SaturatedError):
            await admission.acquire()
        admission.release()
        await waiter
        assert admission.active == 1 and admission.waiting == 0
        admission.release()

    asyncio.run(scenario())
