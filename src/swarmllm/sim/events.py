"""The event loop of the simulator: a clock and a heap of callbacks (pure, single-threaded)."""

from __future__ import annotations

import heapq
from typing import Any, Callable


class Loop:
    """Simulated time in seconds; `at`/`after` schedule a callback, `run` plays them in time order."""

    def __init__(self) -> None:
        self.now = 0.0
        self.events = 0
        self._queue: list[tuple[float, int, Callable[..., Any], tuple]] = []
        self._counter = 0

    def at(self, when: float, callback: Callable[..., Any], *args: Any) -> None:
        heapq.heappush(self._queue, (max(when, self.now), self._counter, callback, args))
        self._counter += 1

    def after(self, delay: float, callback: Callable[..., Any], *args: Any) -> None:
        self.at(self.now + max(0.0, delay), callback, *args)

    def run(self, until: float) -> None:
        queue = self._queue
        while queue and queue[0][0] <= until:
            when, _, callback, args = heapq.heappop(queue)
            self.now = when
            self.events += 1
            callback(*args)
        self.now = max(self.now, until)
