"""Fair use: per-client rate limits and admission control (no I/O, testable alone).

- `RateLimiter`: per key (client IP), requests per minute and tokens per minute, as
  sliding one-minute windows. `check()` returns how many seconds to wait (for
  `Retry-After`) or 0.
- `Admission`: at most `max_active` generations run at once and at most `max_queue`
  wait; anything beyond is refused at once (HTTP 503), so the gateway never piles up
  unbounded work when the swarm is saturated.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict, deque
from typing import Optional


class RateLimiter:
    def __init__(self, requests_per_minute: int, tokens_per_minute: int, window: float = 60.0):
        self.requests_per_minute, self.tokens_per_minute, self.window = requests_per_minute, tokens_per_minute, window
        self._requests: dict[str, deque] = defaultdict(deque)
        self._tokens: dict[str, deque] = defaultdict(deque)

    def _trim(self, events: deque, now: float) -> None:
        while events and events[0][0] <= now - self.window:
            events.popleft()

    def check(self, key: str, tokens: int, now: Optional[float] = None) -> float:
        """Seconds to wait before this request (of about `tokens` tokens) is allowed; 0 = allowed and counted."""
        now = time.monotonic() if now is None else now
        requests, used = self._requests[key], self._tokens[key]
        self._trim(requests, now)
        self._trim(used, now)
        if len(requests) >= self.requests_per_minute:
            return max(0.001, requests[0][0] + self.window - now)
        spent = sum(n for _, n in used)
        if used and spent + tokens > self.tokens_per_minute:
            # wait until enough old tokens leave the window
            excess, wait = spent + tokens - self.tokens_per_minute, 0.0
            for stamp, n in used:
                excess -= n
                wait = stamp + self.window - now
                if excess <= 0:
                    break
            return max(0.001, wait)
        requests.append((now, 1))
        used.append((now, tokens))
        if len(self._requests) > 10_000:  # forget idle clients
            for k in [k for k, v in self._requests.items() if not v]:
                self._requests.pop(k, None), self._tokens.pop(k, None)
        return 0.0

    @staticmethod
    def retry_after(seconds: float) -> str:
        return str(max(1, math.ceil(seconds)))


class SaturatedError(Exception):
    pass


class Admission:
    def __init__(self, max_active: int, max_queue: int):
        self.max_active, self.max_queue = max_active, max_queue
        self._slots = asyncio.Semaphore(max_active)
        self.active = 0
        self.waiting = 0

    async def acquire(self) -> None:
        """Take a slot, waiting in the bounded queue; SaturatedError if the queue is full too."""
        if self.active >= self.max_active and self.waiting >= self.max_queue:
            raise SaturatedError(f"the swarm is saturated ({self.active} generations running, {self.waiting} "
                                 "waiting); retry in a few seconds")
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.active += 1

    def release(self) -> None:
        self.active -= 1
        self._slots.release()
