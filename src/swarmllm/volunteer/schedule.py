"""When a volunteer node serves: `--schedule` (hours of the day) and `--when-idle` (not while in use).

The volunteer says when the machine is theirs: `--schedule 22:00-07:00` serves only at night
(local time; several windows joined by commas; a window may cross midnight), and `--when-idle`
pauses while the machine is in use. "In use" is measured, not guessed from a window title: the
CPU time that *other* programs take (all CPU time minus this process and its children, p2pd
included), averaged over a sample period. Using it above `busy_percent` of one core for
`busy_samples` samples in a row means in use; below it for `idle_samples` samples in a row means
idle again. The asymmetry keeps a node from flapping on a short burst, and gives the machine back
quickly while releasing it slowly.

Pausing does not kill anything: the node announces LEAVING (routers stop sending new sessions),
refuses new sessions, lets the active ones finish (they are drained, not cut), and keeps its
blocks loaded; resuming announces ONLINE again. `ServerNode.pause()` / `resume()` do that; this
module only decides (pure `Schedule`, `UseDetector`) and drives them (`control()`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import time
from dataclasses import dataclass
from typing import Callable, Optional

import psutil

logger = logging.getLogger(__name__)

BUSY_PERCENT = 50.0   # others' CPU use, in % of one core, that counts as "in use"
BUSY_SAMPLES = 2      # ... this many samples in a row pause the node
IDLE_SAMPLES = 6      # ... and this many quiet samples in a row resume it
SAMPLE_SECONDS = 5.0

_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


@dataclass(frozen=True)
class Schedule:
    """Daily windows [start, end) in minutes after local midnight; end < start crosses midnight."""

    windows: tuple[tuple[int, int], ...]

    @classmethod
    def parse(cls, text: str) -> "Schedule":
        windows = []
        for part in text.split(","):
            match = _WINDOW.match(part)
            if not match:
                raise ValueError(f"--schedule {text!r}: each window must look like HH:MM-HH:MM (e.g. 22:00-07:00), "
                                 "several joined by commas")
            h1, m1, h2, m2 = (int(g) for g in match.groups())
            if not (0 <= h1 <= 24 and 0 <= h2 <= 24 and m1 < 60 and m2 < 60) or h1 * 60 + m1 > 1440 \
                    or h2 * 60 + m2 > 1440:
                raise ValueError(f"--schedule {text!r}: {part.strip()!r} is not a time of day (00:00 to 24:00)")
            start, end = h1 * 60 + m1, h2 * 60 + m2
            if start == end:
                raise ValueError(f"--schedule {text!r}: {part.strip()!r} is empty; 00:00-24:00 is the whole day")
            windows.append((start, end))
        return cls(tuple(windows))

    def contains(self, when: dt.datetime) -> bool:
        minute = when.hour * 60 + when.minute
        return any(start <= minute < end if start < end else minute >= start or minute < end
                   for start, end in self.windows)

    def describe(self) -> str:
        return ", ".join(f"{s // 60:02d}:{s % 60:02d}-{e // 60:02d}:{e % 60:02d}" for s, e in self.windows)


class UseDetector:
    """Is the machine in use by others? Fed one CPU sample (% of one core) at a time; pure."""

    def __init__(self, busy_percent: float = BUSY_PERCENT, busy_samples: int = BUSY_SAMPLES,
                 idle_samples: int = IDLE_SAMPLES):
        self.busy_percent, self.busy_samples, self.idle_samples = busy_percent, busy_samples, idle_samples
        self.in_use = False
        self._run = 0  # samples in a row that disagree with the current verdict

    def feed(self, others_percent: float) -> bool:
        busy = others_percent > self.busy_percent
        if busy == self.in_use:
            self._run = 0
        else:
            self._run += 1
            if self._run >= (self.busy_samples if busy else self.idle_samples):
                self.in_use, self._run = busy, 0
        return self.in_use


def serving_verdict(schedule: Optional[Schedule], in_use: bool, now: dt.datetime) -> Optional[str]:
    """None = serve; else the reason to pause, as the volunteer's page shows it."""
    if schedule is not None and not schedule.contains(now):
        return f"outside the schedule ({schedule.describe()})"
    if in_use:
        return "the machine is in use (--when-idle)"
    return None


class OthersCpu:
    """CPU used by every process except this one and its children, in % of one core, between calls."""

    def __init__(self):
        self._me = psutil.Process()
        self._last = self._sample()

    def _sample(self) -> tuple[float, float]:
        total = sum(psutil.cpu_times()[:3])  # user + nice + system, all cores
        own = 0.0
        for proc in [self._me] + self._me.children(recursive=True):
            try:
                times = proc.cpu_times()
                own += times.user + times.system + times.children_user + times.children_system
            except psutil.Error:
                continue
        return time.monotonic(), total - own

    def percent(self) -> float:
        (t0, others0), (t1, others1) = self._last, self._sample()
        self._last = (t1, others1)
        return max(0.0, 100.0 * (others1 - others0) / max(t1 - t0, 1e-3))


async def control(node, schedule: Optional[Schedule], when_idle: bool, detector: Optional[UseDetector] = None,
                  sample_seconds: float = SAMPLE_SECONDS, clock: Callable[[], dt.datetime] = dt.datetime.now,
                  cpu: Optional[Callable[[], float]] = None) -> None:
    """Pause and resume `node` (a ServerNode) by the schedule and the machine's use, until it stops."""
    if schedule is None and not when_idle:
        return
    detector = detector or UseDetector()
    cpu = cpu or (OthersCpu().percent if when_idle else (lambda: 0.0))
    while not node.stopped:
        in_use = detector.feed(cpu()) if when_idle else False
        reason = serving_verdict(schedule, in_use, clock())
        if reason is not None and node.paused_by("schedule") != reason:
            logger.warning("pausing: %s", reason)
            node.pause(reason)
        elif reason is None and node.paused_by("schedule") is not None:
            logger.warning("resuming: %s", "back in the schedule" if schedule else "the machine is idle again")
            node.resume()
        await node.wait_stopped(sample_seconds)


def parse_schedule(text: Optional[str]) -> Optional[Schedule]:
    return Schedule.parse(text) if text else None

