"""Per-peer quotas of a node: how much of it one authenticated peer may hold or use.

Every limit is per peer id as libp2p authenticated it (the other end of a stream). Streams
and frames count against the peer that sends them; a session's sessions, KV memory, compute
and rollbacks count against the peer that opened it, whichever server pushes its steps.

- sessions: a peer holds at most `max_sessions` sessions on this node;
- memory: a peer's sessions reserve at most `max_memory_share` of the node's KV budget. A
  reservation cannot be taken back once granted, so "while others wait" means the rest of the
  budget stays for them, not that a peer may take it all while nobody else is looking;
- compute: a token bucket of compute seconds, refilled at `compute_share` seconds per second up
  to `compute_burst`. A step is refused while its peer's bucket is empty *and another peer is
  being served* (it has a step waiting or computing here, or had one within `contention_window`
  s): alone, a peer may use the whole node
  (a gateway serving many users is one peer), but under contention it gets at most its share.
  An admitted step reserves an estimate of its cost (seconds per position measured here, times
  its positions) and the measured time is settled when it has run, so a peer's concurrent steps
  cannot all pass on one full bucket. The debt is floored at -compute_burst, so time used while
  the node was idle is not held against a peer for long once others arrive. Admitted steps of
  peers within their share queue for the compute thread before those of peers in debt
  (`priority`), so a normal client waits at most for the batch that is running;
- streams: at most `max_streams` open streams per peer;
- bytes in flight: frames received from a peer and not yet processed, at most
  `max_bytes_in_flight` (a frame is counted from its arrival until its handler is done);
- step positions: at most `step_positions` new positions per step (see `step_positions_limit`:
  the protocol's bound, the model's context, the node's longest session, an operator's cap);
- rollbacks: steps that start before the end of their session's cache (speculative decoding's
  rejected drafts, a failover's retried step), at most `max_rollbacks` per session per
  `rollback_window` s.

A refusal raises `QuotaError` (code over_quota) naming the limit, its value and when to retry;
handlers.py sends it to the offender as an ErrorReply and everyone else is served as before.
Pure bookkeeping: the clock is injected, the state is this object's; no I/O, no compute.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional

from swarmllm.protocol import QuotaError
from swarmllm.protocol.messages import MAX_POSITIONS_PER_STEP


@dataclass(frozen=True)
class QuotaLimits:
    """The node's per-peer limits (ServerConfig fields and `swarmllm serve` flags)."""

    max_sessions: int = 32                    # sessions one peer may hold open here
    max_memory_share: float = 0.5             # share of the KV budget one peer's sessions may reserve
    compute_share: float = 0.5                # compute seconds per second a peer earns while others are served
    compute_burst: float = 2.0                # compute seconds a peer may run ahead of its share
    contention_window: float = 2.0            # a peer that asked for a step this recently is being served too
    max_streams: int = 48                     # open streams per peer (all handlers)
    max_bytes_in_flight: int = 256 * 2**20    # bytes of a peer's frames received and not yet processed
    step_positions: int = 2048                # new positions per step (see step_positions_limit)
    max_rollbacks: int = 1200                 # steps that start before the end, per session ...
    rollback_window: float = 60.0             # ... per this many seconds

    def __post_init__(self) -> None:
        for name in ("max_sessions", "max_streams", "max_bytes_in_flight", "step_positions", "max_rollbacks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 < self.max_memory_share <= 1.0:
            raise ValueError(f"max_memory_share must be in (0, 1], got {self.max_memory_share}")
        for name in ("compute_share", "compute_burst", "rollback_window"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


def step_positions_limit(configured: int, context_length: int, max_session_length: int) -> int:
    """Positions one step may carry on a node: no more than the protocol allows, than the model
    can attend over, than the node's longest session, or than the operator's cap."""
    return max(1, min(MAX_POSITIONS_PER_STEP, context_length, max_session_length, configured))


@dataclass
class PeerUsage:
    """What one peer holds and has used on this node."""

    sessions: int = 0
    reserved: int = 0                 # KV budget units its sessions reserve
    streams: int = 0
    bytes_in_flight: int = 0
    compute: float = 0.0              # bucket level in seconds (negative: in debt)
    refilled_at: float = 0.0          # when `compute` was last brought up to date
    asked_at: float = float("-inf")   # when it last asked for a step (contention)
    stepping: int = 0                 # admitted steps not settled yet (queued or computing)

    @property
    def idle(self) -> bool:
        return not (self.sessions or self.reserved or self.streams or self.bytes_in_flight or self.stepping)


def refill(level: float, since: float, now: float, rate: float, burst: float) -> float:
    """A token bucket's level after `now - since` seconds at `rate`, capped at `burst`."""
    return min(burst, level + max(0.0, now - since) * rate)


class PeerQuotas:
    """The per-peer ledger of one node; `clock` is injected (time.monotonic on a node)."""

    def __init__(self, limits: QuotaLimits = QuotaLimits(), clock: Callable[[], float] = time.monotonic):
        self.limits, self.clock = limits, clock
        self.peers: dict[str, PeerUsage] = {}
        self.seconds_per_position = 0.0   # measured here: what an admitted step reserves per position

    def usage(self, peer: str) -> PeerUsage:
        usage = self.peers.get(peer)
        if usage is None:
            now = self.clock()
            usage = self.peers[peer] = PeerUsage(compute=self.limits.compute_burst, refilled_at=now)
        return usage

    def prune(self) -> None:
        """Forget every peer that holds nothing and whose bucket is full again."""
        for peer in list(self.peers):
            self._forget_if_idle(peer)

    def _forget_if_idle(self, peer: str) -> None:
        """Drop a peer that holds nothing and whose bucket is full again (the ledger stays small)."""
        usage = self.peers.get(peer)
        if usage is None or not usage.idle:
            return
        limits, now = self.limits, self.clock()
        if refill(usage.compute, usage.refilled_at, now, limits.compute_share, limits.compute_burst) >= \
                limits.compute_burst and now - usage.asked_at > limits.contention_window:
            del self.peers[peer]

    # --- sessions and KV memory ----------------------------------------------------------
    def admit_session(self, peer: str, cost: int, budget: int) -> None:
        """Count a new session of `cost` budget units for `peer`, or raise QuotaError."""
        limits, usage = self.limits, self.usage(peer)
        if usage.sessions >= limits.max_sessions:
            raise QuotaError("sessions", limits.max_sessions, None,
                             f"peer {peer} already holds {usage.sessions} sessions on this node, the most one peer "
                             f"may hold ({limits.max_sessions}); close one first or use another server")
        allowed = int(limits.max_memory_share * budget)
        if usage.reserved + cost > allowed:
            raise QuotaError("memory", limits.max_memory_share, None,
                             f"peer {peer} would reserve {usage.reserved + cost} of this node's {budget} KV-cache "
                             f"units; one peer may hold at most {limits.max_memory_share:.0%} ({allowed}): close a "
                             "session, ask for a shorter max_length, or use another server")
        usage.sessions += 1
        usage.reserved += cost

    def release_session(self, peer: str, cost: int) -> None:
        usage = self.usage(peer)
        usage.sessions = max(0, usage.sessions - 1)
        usage.reserved = max(0, usage.reserved - cost)
        self._forget_if_idle(peer)

    # --- streams and bytes in flight -------------------------------------------------------
    def open_stream(self, peer: str) -> None:
        limits, usage = self.limits, self.usage(peer)
        if usage.streams >= limits.max_streams:
            raise QuotaError("streams", limits.max_streams, 1.0,
                             f"peer {peer} already has {usage.streams} streams open to this node, the most one "
                             f"peer may have ({limits.max_streams}); close some first")
        usage.streams += 1

    def close_stream(self, peer: str) -> None:
        usage = self.usage(peer)
        usage.streams = max(0, usage.streams - 1)
        self._forget_if_idle(peer)

    def take_bytes(self, peer: str, size: int) -> None:
        """A frame of `size` bytes from `peer` arrived and waits to be processed."""
        limits, usage = self.limits, self.usage(peer)
        if usage.bytes_in_flight + size > limits.max_bytes_in_flight:
            raise QuotaError("bytes_in_flight", limits.max_bytes_in_flight, 0.5,
                             f"peer {peer} has {usage.bytes_in_flight} bytes of frames waiting on this node; with "
                             f"this frame of {size} that would exceed {limits.max_bytes_in_flight}: wait for "
                             "replies before sending more")
        usage.bytes_in_flight += size

    def release_bytes(self, peer: str, size: int) -> None:
        usage = self.usage(peer)
        usage.bytes_in_flight = max(0, usage.bytes_in_flight - size)
        self._forget_if_idle(peer)

    # --- steps -------------------------------------------------------------------------
    def check_step_positions(self, n_positions: int) -> None:
        limit = self.limits.step_positions
        if n_positions > limit:
            raise QuotaError("step_positions", limit, None,
                             f"a step of {n_positions} positions is more than this node takes at once ({limit}); "
                             "send the positions in shorter steps")

    def check_rollback(self, times: deque, rolls_back: bool) -> None:
        """A step that starts before the end of its session's cache, under the session's
        rollback budget (`times`: when its recent rollbacks happened)? Raises QuotaError if not."""
        if not rolls_back:
            return
        limits, now = self.limits, self.clock()
        while times and times[0] <= now - limits.rollback_window:
            times.popleft()
        if len(times) >= limits.max_rollbacks:
            retry = max(0.001, times[0] + limits.rollback_window - now)
            raise QuotaError("rollbacks", limits.max_rollbacks, retry,
                             f"this session rolled its cache back {len(times)} times in the last "
                             f"{limits.rollback_window:g} s, the most allowed ({limits.max_rollbacks}); retry in "
                             f"{retry:.1f} s")

    def record_rollback(self, times: deque, rolls_back: bool) -> None:
        if rolls_back:
            times.append(self.clock())

    def admit_compute(self, peer: str, n_positions: int) -> float:
        """Admit a step of n_positions for `peer` (the session's opener) or raise QuotaError;
        returns the seconds reserved, to pass to `settle_compute` once the step ran (or was dropped)."""
        limits, now = self.limits, self.clock()
        usage = self.usage(peer)
        usage.compute = refill(usage.compute, usage.refilled_at, now, limits.compute_share, limits.compute_burst)
        usage.refilled_at = now
        usage.asked_at = now
        if usage.compute <= 0 and self._contended(peer, now):
            retry = max(0.01, -usage.compute / limits.compute_share)
            raise QuotaError("compute", limits.compute_share, retry,
                             f"peer {peer} used its share of this node's compute ({limits.compute_share:g} s per "
                             f"second while other peers are served, bursts of {limits.compute_burst:g} s); retry in "
                             f"{retry:.1f} s or use another server")
        reserved = min(limits.compute_burst, self.seconds_per_position * n_positions)
        usage.compute = max(-limits.compute_burst, usage.compute - reserved)
        usage.stepping += 1
        return reserved

    def settle_compute(self, peer: str, reserved: float, seconds: Optional[float], n_positions: int) -> None:
        """The step admitted with `reserved` took `seconds` of compute (None: it never ran)."""
        usage = self.usage(peer)
        usage.stepping = max(0, usage.stepping - 1)
        usage.asked_at = self.clock()  # it waited until now: others were contending with it all along
        spent = 0.0 if seconds is None else max(0.0, seconds)
        burst = self.limits.compute_burst
        usage.compute = max(-burst, min(burst, usage.compute + reserved - spent))
        if seconds is not None and n_positions > 0:
            sample = spent / n_positions
            self.seconds_per_position = sample if self.seconds_per_position == 0 else \
                0.9 * self.seconds_per_position + 0.1 * sample

    def priority(self, peer: str) -> float:
        """Where the peer's admitted steps queue for the compute thread (batching.py): 0 while its
        bucket holds compute, its debt in seconds once it used more (later than everyone within share)."""
        return max(0.0, -self.usage(peer).compute)

    def _contended(self, peer: str, now: float) -> bool:
        """Whether another peer is being served here: it has a step queued or computing, or had one
        within the contention window (the time between a client's steps)."""
        window = self.limits.contention_window
        return any(other != peer and (usage.stepping or now - usage.asked_at <= window)
                   for other, usage in self.peers.items())

