"""What this gateway is asked for, per model: requests and tokens per minute, and its queue.

`DemandCounter` records each generation request for a catalog model when it arrives (before
the swarm is asked, so requests for a model nobody serves yet count too: that is the demand
that should bring nodes to it) with its declared size (prompt characters / 4 + max tokens,
the rate limiter's estimate), and how many of the model's requests are in flight. `rates()`
gives, per model seen in the last `window` seconds, (model, requests/min, tokens/min, queue
length); the app publishes them every few seconds through the client (SwarmClient.publish_demand),
as signed DemandRecords nodes read (server/model_choice.py). The clock is injected for tests.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from typing import Callable


class DemandCounter:
    def __init__(self, window: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.window, self.clock = window, clock
        self._arrivals: dict[str, deque] = defaultdict(deque)  # model -> (time, tokens) of recent requests
        self._in_flight: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    def arrived(self, model_id: str, tokens: int) -> None:
        with self._lock:
            self._arrivals[model_id].append((self.clock(), tokens))

    def started(self, model_id: str) -> None:
        with self._lock:
            self._in_flight[model_id] += 1

    def finished(self, model_id: str) -> None:
        with self._lock:
            self._in_flight[model_id] = max(0, self._in_flight[model_id] - 1)

    def rates(self) -> list[tuple[str, float, float, int]]:
        """[(model id, requests/min, tokens/min, requests in flight)] for models asked for within the window."""
        now, out = self.clock(), []
        with self._lock:
            for model_id, arrivals in self._arrivals.items():
                while arrivals and arrivals[0][0] < now - self.window:
                    arrivals.popleft()
                queue = self._in_flight.get(model_id, 0)
                if arrivals or queue:
                    per_minute = 60.0 / self.window
                    out.append((model_id, len(arrivals) * per_minute, sum(t for _, t in arrivals) * per_minute, queue))
        return sorted(out)
