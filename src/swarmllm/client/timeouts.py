"""How long a session waits for a step before it presumes the chain stalled (pure, no I/O).

A fixed 5 s (+20 ms per position) until the session has timed a few decode steps; then
`slack` times their moving average (never under 1.5 s), so a frozen server is noticed in
about a second on a fast chain. A timeout after which every server still answers a ping was a
load spike, not a failure: `relax()` doubles `slack` for the session. Replays (a failover
rebuilding a replacement's KV cache) get their own, longer bound.
"""

from __future__ import annotations

from typing import Optional

from swarmllm.engine.blocks import EXACT_STEP_POSITIONS


def fixed_timeout(n_positions: int) -> float:
    """A step's timeout before anything was measured: 5 s + 20 ms per position."""
    return 5.0 + 0.02 * n_positions


class StepTimeouts:
    """The adaptive timeout policy of one session."""

    def __init__(self, fixed: Optional[float] = None, slack: float = 8.0):
        self.fixed = fixed                # a caller's fixed step timeout overrides the policy
        self.slack = slack
        self.decode_seconds = 0.0         # moving average of decode-step times
        self.decode_steps = 0

    def observe(self, seconds: float, n_positions: int) -> None:
        """A step of n_positions took `seconds` (retried steps, whose time includes a recovery, are not observed)."""
        if n_positions <= EXACT_STEP_POSITIONS:  # decode and verify steps; prefill time says little about the next token
            self.decode_seconds = seconds if self.decode_steps == 0 else 0.8 * self.decode_seconds + 0.2 * seconds
            self.decode_steps += 1

    def relax(self) -> None:
        """A timeout turned out to be slowness, not death: be more patient from now on."""
        self.slack = min(64.0, self.slack * 2)

    def step(self, n_positions: int) -> float:
        if self.fixed is not None:
            return self.fixed
        default = fixed_timeout(n_positions)
        if self.decode_steps < 3:
            return default
        return min(default, max(1.5, self.slack * self.decode_seconds + 0.02 * n_positions))

    def replay(self, n_positions: int) -> float:
        """A replay recomputes a whole history (in its original chunks) on the new servers only.

        On a chain whose decode steps are known to be quick, 2 s + 20 ms per position (scaled
        by `slack` after false alarms); otherwise, or when that is longer, 5 s + 20 ms per position.
        """
        default = fixed_timeout(n_positions)
        if self.decode_steps < 3 or self.decode_seconds > 0.2:
            return default
        return min(default, (2.0 + 0.02 * n_positions) * self.slack / 8.0)
