"""The counters a node announces in its ServerRecord (v9), for dashboards.

`NodeCounters.sample(...)` returns the record fields: uptime, the process's resident memory, its CPU
use since the previous sample (psutil: 100 = one core busy; a node samples once per announcement, so
this is CPU over the last announce period), and the totals since start of tokens computed through
the span and stream payload bytes up and down (the swarm node's `Traffic`). Every value is clamped
into the record's bounds (protocol/records.py), so a counter can never make the record invalid.

They are claims like the rest of the record: routing never reads them; readers bound what they
believe (gateway/swarm_history.py). Nothing here does I/O beyond reading this process's own stats.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable, Optional

import psutil

from swarmllm.protocol.records import MAX_COUNTER, MAX_CPU_PERCENT, MAX_UPTIME

logger = logging.getLogger(__name__)


def _count(value) -> int:
    try:
        return max(0, min(int(value or 0), MAX_COUNTER))
    except (TypeError, ValueError, OverflowError):
        return 0


def _bounded(value: float, upper: float) -> float:
    return min(max(value, 0.0), upper) if math.isfinite(value) else 0.0


class NodeCounters:
    def __init__(self, started_at: Optional[float] = None, clock: Callable[[], float] = time.time):
        self.started_at = clock() if started_at is None else started_at
        self._clock = clock
        try:
            self._process: Optional[psutil.Process] = psutil.Process()
            self._process.cpu_percent(None)  # the first call only sets the baseline
        except (psutil.Error, OSError) as e:  # e.g. a sandbox without /proc: announce zeros
            logger.warning("cannot read this process's memory and CPU: %s", e)
            self._process = None

    def sample(self, tokens_served: int, traffic=None) -> dict:
        """The counter fields of a ServerRecord now (module docstring)."""
        memory, cpu = 0, 0.0
        if self._process is not None:
            try:
                memory, cpu = self._process.memory_info().rss, self._process.cpu_percent(None)
            except (psutil.Error, OSError):
                pass
        return {"uptime_seconds": round(_bounded(self._clock() - self.started_at, MAX_UPTIME), 1),
                "memory_bytes": _count(memory), "cpu_percent": round(_bounded(float(cpu), MAX_CPU_PERCENT), 1),
                "tokens_served": _count(tokens_served),
                "bytes_sent": _count(getattr(traffic, "bytes_sent", 0)),
                "bytes_received": _count(getattr(traffic, "bytes_received", 0))}
