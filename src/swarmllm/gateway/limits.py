"""Fair use: per-client rate limits, per-client concurrency and admission control (no I/O).

Pure policies with their clock injected, so they are tested without a gateway:

- `RateLimiter`: per client key, requests per minute and tokens per minute over a sliding
  window (the two-window estimate: the previous fixed window weighted by how much of it
  still overlaps the sliding one, plus the current one). `admit()` charges a request and
  its *declared* size before anything expensive runs and returns a `Ticket` or how many
  seconds to wait (for `Retry-After`); `settle()` replaces the declared size by the real
  token count once the prompt is tokenized. Memory is bounded: a key costs a fixed few
  numbers, a key idle for a whole window is forgotten, and past `max_keys` the least
  recently seen key is evicted (it starts afresh: a flood of new addresses can reset
  someone's window, never grow the gateway's memory).
- `ClientSlots`: at most `limit` requests of one client key in flight (active or queued)
  at once, so one address cannot take every admission slot. Keys leave at zero.
- `Admission`: at most `max_active` generations run at once and at most `max_queue` wait;
  anything beyond is refused at once (HTTP 503), so the gateway never piles up unbounded
  work when the swarm is saturated. Waiters are admitted by priority (free_tier.py: recent
  verified contribution of the caller's linked nodes; anonymous 0), first come first within one.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Optional, Union


@dataclass(frozen=True)
class Limits:
    """What one client (an address, or an API key) may use."""

    requests_per_minute: int
    tokens_per_minute: int
    concurrency: int  # requests in flight (tokenizing, queued or generating) at once


class _Window:
    """Counts of one key: the current fixed window and the one before it."""

    __slots__ = ("index", "previous_requests", "previous_tokens", "requests", "tokens")

    def __init__(self, index: int):
        self.index = index
        self.previous_requests = self.previous_tokens = 0
        self.requests = self.tokens = 0

    def roll(self, index: int) -> None:
        if index == self.index + 1:
            self.previous_requests, self.previous_tokens = self.requests, self.tokens
        elif index > self.index + 1:
            self.previous_requests = self.previous_tokens = 0
        else:
            return
        self.requests = self.tokens = 0
        self.index = index


@dataclass
class Ticket:
    """A request admitted by `RateLimiter.admit`: where its tokens were charged."""

    key: str
    index: int   # the fixed window it was charged in
    tokens: int  # what it is charged now (its declared size until settled)


def _wait(previous: float, current: float, elapsed: float, window: float, need: float, limit: float) -> float:
    """Seconds until previous*(1 - f) + current + need <= limit, f the fraction of the window elapsed."""
    room = limit - need
    if room >= current and previous > 0:  # within the current window, as the previous one fades
        t = window * (1 - (room - current) / previous) - elapsed
        if t < window - elapsed:
            return max(0.0, t)
    to_next = window - elapsed
    if room < 0:  # bigger than a whole window's allowance: wait until nothing is counted
        return to_next + window
    return to_next + (max(0.0, window * (1 - room / current)) if current > 0 else 0.0)


class RateLimiter:
    def __init__(self, window: float = 60.0, max_keys: int = 50_000, clock: Callable[[], float] = time.monotonic):
        self.window, self.max_keys, self.clock = window, max_keys, clock
        self._keys: OrderedDict[str, _Window] = OrderedDict()  # least recently seen first

    def __len__(self) -> int:
        return len(self._keys)

    def _window(self, key: str, now: float) -> _Window:
        index = int(now // self.window)
        while self._keys:  # forget keys idle for a whole window: nothing of theirs is counted any more
            oldest = next(iter(self._keys.values()))
            if oldest.index > index - 2:
                break
            self._keys.popitem(last=False)
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _Window(index)
            while len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(key)
            state.roll(index)
        return state

    def admit(self, key: str, tokens: int, limits: Limits) -> Union[Ticket, float]:
        """Charge one request of about `tokens` tokens: a Ticket, or the seconds to wait (nothing charged).

        A request larger than a whole minute's tokens is allowed when nothing else is counted,
        so a small allowance never makes a single big request impossible."""
        now = self.clock()
        state = self._window(key, now)
        elapsed = now - state.index * self.window
        weight = 1 - elapsed / self.window
        requests = state.previous_requests * weight + state.requests
        if requests + 1 > limits.requests_per_minute:
            return max(0.001, _wait(state.previous_requests, state.requests, elapsed, self.window, 1,
                                    limits.requests_per_minute))
        spent = state.previous_tokens * weight + state.tokens
        if spent > 0 and spent + tokens > limits.tokens_per_minute:
            return max(0.001, _wait(state.previous_tokens, state.tokens, elapsed, self.window, tokens,
                                    limits.tokens_per_minute))
        state.requests += 1
        state.tokens += tokens
        return Ticket(key, state.index, tokens)

    def settle(self, ticket: Ticket, tokens: int, limits: Limits) -> float:
        """Charge `tokens` instead of what the ticket declared; the seconds to wait if that puts
        the client over its token allowance (0 = go on). The charge stays either way: the
        request made the gateway tokenize it."""
        state = self._keys.get(ticket.key)
        delta, ticket.tokens = tokens - ticket.tokens, tokens
        if state is None:  # evicted meanwhile: nothing left to correct
            return 0.0
        now = self.clock()
        self._keys.move_to_end(ticket.key)
        state.roll(int(now // self.window))
        if state.index == ticket.index:
            state.tokens = max(0, state.tokens + delta)
        elif state.index == ticket.index + 1:
            state.previous_tokens = max(0, state.previous_tokens + delta)
        else:
            return 0.0
        if delta <= 0:
            return 0.0
        elapsed = now - state.index * self.window
        spent = state.previous_tokens * (1 - elapsed / self.window) + state.tokens
        if spent > limits.tokens_per_minute and spent > tokens:  # alone in its window it may pass
            return max(0.001, _wait(state.previous_tokens, state.tokens, elapsed, self.window, 0,
                                    limits.tokens_per_minute))
        return 0.0

    @staticmethod
    def retry_after(seconds: float) -> str:
        return str(max(1, math.ceil(seconds)))


class ClientBusyError(Exception):
    pass


class ClientSlots:
    """Requests in flight per client key; `take` refuses the one past the client's limit."""

    def __init__(self) -> None:
        self._in_flight: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._in_flight)

    def in_flight(self, key: str) -> int:
        return self._in_flight.get(key, 0)

    def take(self, key: str, limit: int) -> None:
        count = self._in_flight.get(key, 0)
        if count >= limit:
            raise ClientBusyError(f"too many requests at once: at most {limit} per client may be in flight; "
                                  "wait for one to finish")
        self._in_flight[key] = count + 1

    def release(self, key: str) -> None:
        count = self._in_flight.get(key, 0) - 1
        if count > 0:
            self._in_flight[key] = count
        else:
            self._in_flight.pop(key, None)


class SaturatedError(Exception):
    pass


class Admission:
    def __init__(self, max_active: int, max_queue: int):
        self.max_active, self.max_queue = max_active, max_queue
        self.active = 0
        self._waiters: list[tuple[float, int, asyncio.Future]] = []  # (-priority, arrival, future): a heap
        self._arrivals = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, f in self._waiters if not f.done())

    async def acquire(self, priority: float = 0.0) -> None:
        """Take a slot, waiting in the bounded queue (higher priority first); SaturatedError if it is full."""
        if self.active < self.max_active and not self.waiting:
            self.active += 1
            return
        if self.waiting >= self.max_queue:
            raise SaturatedError(f"the swarm is saturated ({self.active} generations running, {self.waiting} "
                                 "waiting); retry in a few seconds")
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (-priority, next(self._arrivals), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # the slot came as we were cancelled: pass it on
                self.release()
            raise

    def release(self) -> None:
        self.active -= 1
        while self._waiters:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                self.active += 1
                future.set_result(None)
                return


def declared_tokens(characters: int, max_tokens: Optional[int], default_max_tokens: int) -> int:
    """A request's size before tokenizing: its text at ~4 characters a token, plus what it may generate."""
    return math.ceil(characters / 4) + (max_tokens or default_max_tokens)
