"""Reputation: what this client has seen of each server, as a pure policy over injected storage.

A `PeerRecord` per peer id: steps verified, mismatches, timeouts (lifetime counts, and the same
decayed with a half-life, so that old history weighs less), first and last seen, bans (how many,
and until when). Functions of a record and the time (`score`, `is_banned`, `sample_probability`,
`routing_penalty`) and updates that return a new record (`verified`, `mismatched`, `timed_out`,
`banned`) are pure; `Reputation` applies them to records kept in a `ReputationStore` (in memory
here, SQLite in reputation_store.py so that a restart does not forgive a liar).

The policy (`ReputationPolicy`, every number a field):
- score in [0, 1]: (clean + 1) / (clean + bad + 2) over decayed counts, bad = mismatches x 20 +
  timeouts; a new peer scores 0.5, a long clean record approaches 1, any mismatch drops it.
- sample_probability (adaptive replication, for the verification modes): 1.0 for a peer never
  verified, then K / (K + clean / (1 + decayed timeouts)) with K = 20 (0.5 after 20 clean
  steps, 0.1 after 180), never below `sample_floor` (0.02); after a mismatch at least
  `mismatch_sampling` (0.5) x the decayed mismatches, whatever the clean record: a peer caught
  once is checked every other step until that decays (half-life), one caught twice always.
- bans: `ban_base` (10 min) x `ban_growth` (4) ^ (bans so far), at most `ban_max` (30 days): a
  liar caught again is out for 10 min, 40 min, 2.7 h, 10.7 h, ...; `is_banned` while it lasts.
- routing_penalty: 0 for scores >= 0.5 (new and clean peers route as their speed says), rising
  to `max_penalty` at score 0; routing multiplies a hop's cost by 1 + penalty (routing.py).

Claims about third parties: only statements signed by a gateway in `trusted` are applied
(`apply_statement`, protocol/statements.py verifies), and only to make things stricter (a later
ban, more mismatches): a trusted gateway can warn us about a liar, not clear one we caught.
The trusted gateways are the peer ids in `trusted_gateways_path()` (<state folder>/
trusted-gateways, one per line, '#' comments), read by `load_trusted_gateways`.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Collection, Iterable, Optional, Protocol

from swarmllm.protocol.statements import ReputationStatement, verify_statement
from swarmllm.state import state_dir


@dataclass(frozen=True)
class ReputationPolicy:
    half_life: float = 7 * 86400.0   # s for decayed counts to halve
    mismatch_weight: float = 20.0    # a mismatch outweighs this many clean steps in the score
    sample_k: float = 20.0           # clean steps at which sampling is down to 1/2
    sample_floor: float = 0.02       # the least probability a step of any peer is re-checked
    mismatch_sampling: float = 0.5   # the least probability per (decayed) mismatch
    ban_base: float = 600.0          # s of the first ban
    ban_growth: float = 4.0          # each further ban lasts this much longer
    ban_max: float = 30 * 86400.0    # s, the longest ban
    max_penalty: float = 1.0         # routing cost x (1 + this) at score 0


@dataclass(frozen=True)
class PeerRecord:
    peer_id: str
    first_seen: float
    last_seen: float
    steps_verified: int = 0          # lifetime counts
    mismatches: int = 0
    timeouts: int = 0
    clean: float = 0.0               # decayed counts, as of `as_of`
    bad_mismatches: float = 0.0
    bad_timeouts: float = 0.0
    as_of: float = 0.0
    bans: int = 0                    # bans so far
    banned_until: float = 0.0        # unix time; 0 = never banned


# --- pure functions of a record ----------------------------------------------------------
def new_record(peer_id: str, now: float) -> PeerRecord:
    return PeerRecord(peer_id, first_seen=now, last_seen=now, as_of=now)


def decayed(record: PeerRecord, now: float, policy: ReputationPolicy = ReputationPolicy()) -> PeerRecord:
    """The record with its decayed counts brought forward to `now`."""
    if now <= record.as_of:
        return record
    factor = math.pow(0.5, (now - record.as_of) / policy.half_life)
    return replace(record, clean=record.clean * factor, bad_mismatches=record.bad_mismatches * factor,
                   bad_timeouts=record.bad_timeouts * factor, as_of=now)


def score(record: PeerRecord, now: float, policy: ReputationPolicy = ReputationPolicy()) -> float:
    r = decayed(record, now, policy)
    bad = r.bad_mismatches * policy.mismatch_weight + r.bad_timeouts
    return (r.clean + 1.0) / (r.clean + bad + 2.0)


def is_banned(record: PeerRecord, now: float) -> bool:
    return record.banned_until > now


def sample_probability(record: Optional[PeerRecord], now: float,
                       policy: ReputationPolicy = ReputationPolicy()) -> float:
    if record is None or record.steps_verified == 0:
        return 1.0
    r = decayed(record, now, policy)
    clean = policy.sample_k / (policy.sample_k + r.clean / (1.0 + r.bad_timeouts))
    return min(1.0, max(policy.sample_floor, clean, policy.mismatch_sampling * r.bad_mismatches))


def routing_penalty(record: Optional[PeerRecord], now: float, policy: ReputationPolicy = ReputationPolicy()) -> float:
    if record is None:
        return 0.0
    return policy.max_penalty * max(0.0, 1.0 - 2.0 * score(record, now, policy))


def verified(record: PeerRecord, now: float, steps: int = 1,
             policy: ReputationPolicy = ReputationPolicy()) -> PeerRecord:
    r = decayed(record, now, policy)
    return replace(r, steps_verified=r.steps_verified + steps, clean=r.clean + steps, last_seen=max(r.last_seen, now))


def mismatched(record: PeerRecord, now: float, policy: ReputationPolicy = ReputationPolicy()) -> PeerRecord:
    r = decayed(record, now, policy)
    return replace(r, mismatches=r.mismatches + 1, bad_mismatches=r.bad_mismatches + 1, last_seen=max(r.last_seen, now))


def timed_out(record: PeerRecord, now: float, policy: ReputationPolicy = ReputationPolicy()) -> PeerRecord:
    r = decayed(record, now, policy)
    return replace(r, timeouts=r.timeouts + 1, bad_timeouts=r.bad_timeouts + 1, last_seen=max(r.last_seen, now))


def ban_seconds(bans_so_far: int, policy: ReputationPolicy = ReputationPolicy()) -> float:
    return min(policy.ban_max, policy.ban_base * policy.ban_growth ** min(bans_so_far, 64))


def banned(record: PeerRecord, now: float, policy: ReputationPolicy = ReputationPolicy()) -> PeerRecord:
    """Banned from now for the next ban's duration (escalating); a ban in force is extended, never shortened."""
    until = max(record.banned_until, now + ban_seconds(record.bans, policy))
    return replace(record, bans=record.bans + 1, banned_until=until, last_seen=max(record.last_seen, now))


def with_statement(record: PeerRecord, statement: ReputationStatement, now: float) -> PeerRecord:
    """A trusted gateway's statement applied: only ever stricter (a later ban, more mismatches)."""
    r = decayed(record, now)
    extra = max(0, statement.mismatches - r.mismatches)
    return replace(r, banned_until=max(r.banned_until, statement.banned_until), mismatches=r.mismatches + extra,
                   bad_mismatches=r.bad_mismatches + extra)


# --- storage and the stateful front ------------------------------------------------------
class ReputationStore(Protocol):
    def load_all(self) -> Iterable[PeerRecord]: ...

    def save(self, record: PeerRecord) -> None: ...


class MemoryStore:
    """A ReputationStore that forgets at exit (tests, throwaway clients)."""

    def __init__(self) -> None:
        self.records: dict[str, PeerRecord] = {}

    def load_all(self) -> Iterable[PeerRecord]:
        return list(self.records.values())

    def save(self, record: PeerRecord) -> None:
        self.records[record.peer_id] = record


class Reputation:
    """Every peer's record, read once from `store` and written back on each change."""

    def __init__(self, store: Optional[ReputationStore] = None, policy: ReputationPolicy = ReputationPolicy(),
                 trusted: Collection[str] = (), clock: Callable[[], float] = time.time):
        self.store = store if store is not None else MemoryStore()
        self.policy, self.trusted, self.clock = policy, frozenset(trusted), clock
        self._records = {r.peer_id: r for r in self.store.load_all()}

    def record(self, peer_id: str) -> Optional[PeerRecord]:
        return self._records.get(peer_id)

    def _update(self, peer_id: str, change: Callable[[PeerRecord, float], PeerRecord],
                now: Optional[float]) -> PeerRecord:
        now = self.clock() if now is None else now
        record = change(self._records.get(peer_id) or new_record(peer_id, now), now)
        self._records[peer_id] = record
        self.store.save(record)
        return record

    def score(self, peer_id: str, now: Optional[float] = None) -> float:
        record = self._records.get(peer_id)
        return 0.5 if record is None else score(record, self.clock() if now is None else now, self.policy)

    def is_banned(self, peer_id: str, now: Optional[float] = None) -> bool:
        record = self._records.get(peer_id)
        return record is not None and is_banned(record, self.clock() if now is None else now)

    def banned_peers(self, now: Optional[float] = None) -> set[str]:
        now = self.clock() if now is None else now
        return {peer for peer, record in self._records.items() if is_banned(record, now)}

    def sample_probability(self, peer_id: str, now: Optional[float] = None) -> float:
        return sample_probability(self._records.get(peer_id), self.clock() if now is None else now, self.policy)

    def penalties(self, peer_ids: Iterable[str], now: Optional[float] = None) -> dict[str, float]:
        """Routing penalties (routing.plan_chain) of the given peers; peers without one are left out."""
        now = self.clock() if now is None else now
        out = {peer: routing_penalty(self._records.get(peer), now, self.policy) for peer in peer_ids}
        return {peer: penalty for peer, penalty in out.items() if penalty > 0}

    def record_verified(self, peer_id: str, steps: int = 1, now: Optional[float] = None) -> PeerRecord:
        return self._update(peer_id, lambda r, t: verified(r, t, steps, self.policy), now)

    def record_mismatch(self, peer_id: str, now: Optional[float] = None) -> PeerRecord:
        return self._update(peer_id, lambda r, t: mismatched(r, t, self.policy), now)

    def record_timeout(self, peer_id: str, now: Optional[float] = None) -> PeerRecord:
        return self._update(peer_id, lambda r, t: timed_out(r, t, self.policy), now)

    def ban(self, peer_id: str, now: Optional[float] = None) -> PeerRecord:
        return self._update(peer_id, lambda r, t: banned(r, t, self.policy), now)

    def apply_statement(self, value, now: Optional[float] = None) -> ReputationStatement:
        """Apply a signed statement (an envelope) if a trusted gateway signed it; RecordRejected otherwise."""
        now = self.clock() if now is None else now
        statement = verify_statement(value, self.trusted, now=now)
        self._update(statement.subject, lambda r, t: with_statement(r, statement, t), now)
        return statement


def trusted_gateways_path() -> Path:
    return state_dir() / "trusted-gateways"


def load_trusted_gateways(path: Optional[os.PathLike | str] = None) -> frozenset[str]:
    """Peer ids of the gateways whose reputation statements this user believes (none if no file)."""
    path = Path(path) if path is not None else trusted_gateways_path()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return frozenset()
    peers = {line.split("#", 1)[0].strip() for line in lines}
    return frozenset(peer for peer in peers if peer)

