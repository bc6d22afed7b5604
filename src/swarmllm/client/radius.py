"""Trust radii: which servers a session may use, by whose machines they are. Pure, no I/O.

Three radii, nested: local (servers certified by my own owner key: my machines, or my
household's, which share the key file) ⊂ trusted (local, and servers certified by an owner I
paired with: `swarmllm pair`) ⊂ public (every server).

- `radius_of(record, my_owner_id, trusted_owner_ids, now=...)`: the narrowest radius a server
  is in. It goes by the record's owner certificate only, checked again here
  (protocol/owners.py `verify_certificate`: signed by its owner key, issued for the record's
  peer id, valid at `now`); a record without one, or with one that fails, is public. What a
  record says about itself otherwise (a label, a name) counts for nothing. The certificate
  names the record's peer id, and the client only ever opens streams to a record's peer id,
  which libp2p authenticates: a session routed inside a radius talks to the machines the
  certificates name, not to whoever wrote the record.
- `RadiusSpec` / `parse_radius(text)`: "local", "trusted", "public", or a preferred radius
  with the widenings allowed when it cannot serve the model, narrowest first and joined by
  "+": "trusted+public" = trusted servers only, unless they do not cover every block, then
  any. `within(records, radius, ...)` keeps the servers inside a radius;
  `choose_radius(records, spec, n_blocks, ...)` picks the first radius of the spec whose
  online servers cover blocks [0, n_blocks), and None if not even the widest one does.
How owner ids are stored (owners.py TrustStore) and how routing uses the chosen servers
(routing.py) are the callers'.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Collection, Iterable, Optional

from swarmllm.protocol.envelope import RecordRejected
from swarmllm.protocol.owners import verify_certificate
from swarmllm.protocol.records import ServerRecord, ServerState


class Radius(str, Enum):
    LOCAL = "local"      # certified by my owner key
    TRUSTED = "trusted"  # ... or by an owner I paired with
    PUBLIC = "public"    # anyone

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def includes(self, other: "Radius") -> bool:
        """Whether a server in radius `other` is inside this radius (they nest)."""
        return other.rank <= self.rank


_RANKS = {Radius.LOCAL: 0, Radius.TRUSTED: 1, Radius.PUBLIC: 2}


@dataclass(frozen=True)
class RadiusSpec:
    """A preferred radius and the wider ones a session may fall back to, narrowest first."""

    steps: tuple[Radius, ...]

    def __post_init__(self) -> None:
        if not self.steps or any(a.rank >= b.rank for a, b in zip(self.steps, self.steps[1:])):
            raise ValueError("a radius spec lists radii from the narrowest to the widest, each once")

    @property
    def preferred(self) -> Radius:
        return self.steps[0]

    @property
    def widest(self) -> Radius:
        return self.steps[-1]

    def allows(self, radius: Radius) -> bool:
        return self.widest.includes(radius)

    def __str__(self) -> str:
        return "+".join(step.value for step in self.steps)


def parse_radius(text: str) -> RadiusSpec:
    """"local", "trusted", "public", or widenings such as "trusted+public", "local+trusted+public"."""
    names = [part.strip().lower() for part in str(text).split("+")]
    try:
        steps = tuple(Radius(name) for name in names)
    except ValueError:
        raise ValueError(f"--radius {text!r}: use local, trusted or public, optionally with wider fallbacks joined by "
                         "'+' (e.g. trusted+public)") from None
    try:
        return RadiusSpec(steps)
    except ValueError:
        raise ValueError(f"--radius {text!r}: list the radii from the narrowest to the widest, each once "
                         "(local+trusted+public)") from None


def radius_of(record: ServerRecord, my_owner_id: Optional[str], trusted_owner_ids: Collection[str], *,
              now: float) -> Radius:
    """The narrowest radius `record`'s server is in, by its verified owner certificate (module docstring)."""
    certificate = record.owner
    if certificate is None:
        return Radius.PUBLIC
    try:
        verify_certificate(certificate, record.peer_id, now=now)
    except RecordRejected:
        return Radius.PUBLIC
    owner = certificate.owner_id
    if my_owner_id is not None and owner == my_owner_id:
        return Radius.LOCAL
    if owner in trusted_owner_ids:
        return Radius.TRUSTED
    return Radius.PUBLIC


def within(records: Iterable[ServerRecord], radius: Radius, my_owner_id: Optional[str],
           trusted_owner_ids: Collection[str], *, now: float) -> list[ServerRecord]:
    """The records whose servers lie inside `radius`."""
    return [r for r in records if radius.includes(radius_of(r, my_owner_id, trusted_owner_ids, now=now))]


def covers_model(records: Iterable[ServerRecord], n_blocks: int) -> bool:
    """Whether the online records' spans together cover blocks [0, n_blocks)."""
    covered = [False] * n_blocks
    for record in records:
        if record.state == ServerState.ONLINE:
            for block in range(max(0, record.start), min(n_blocks, record.end)):
                covered[block] = True
    return all(covered)


def choose_radius(records: Iterable[ServerRecord], spec: RadiusSpec, n_blocks: int, my_owner_id: Optional[str],
                  trusted_owner_ids: Collection[str], *, now: float) -> Optional[tuple[Radius, list[ServerRecord]]]:
    """The first radius of `spec` whose servers cover the model, with those servers; None if none does."""
    records = list(records)
    for radius in spec.steps:
        inside = within(records, radius, my_owner_id, trusted_owner_ids, now=now)
        if covers_model(inside, n_blocks):
            return radius, inside
    return None


# --- scoping a plan -------------------------------------------------------------------------
class RadiusError(ValueError):
    """No chain fits the radius; the message names the radius and the uncovered blocks."""

    def __init__(self, message: str, radius: Radius, missing: list[tuple[int, int]]):
        super().__init__(message)
        self.radius, self.missing = radius, missing


@dataclass(frozen=True)
class Scope:
    """Where a session may route: `spec` (radius and widenings); `privacy`: the radius of the servers that
    see token ids, embeddings or the final hidden states (the chain's first and last blocks, i.e. the ends of
    a ring), None = the narrowest that can serve; my owner id and the owners I trust."""

    spec: RadiusSpec
    privacy: Optional[Radius] = None
    my_owner_id: Optional[str] = None
    trusted_owner_ids: frozenset = frozenset()
    ring_ends: bool = False  # the ends must also be able to ring (a lite client: servers embed and sample)


def _spans(spans) -> str:
    return ", ".join(f"[{a}, {b})" for a, b in spans)


def _uncovered(n_blocks: int, records: list[ServerRecord], start: int, end: int) -> list[tuple[int, int]]:
    covered = [False] * n_blocks
    for record in records:
        if record.state == ServerState.ONLINE:
            for block in range(max(0, record.start), min(n_blocks, record.end)):
                covered[block] = True
    spans, block = [], start
    while block < end:
        if covered[block]:
            block += 1
            continue
        first = block
        while block < end and not covered[block]:
            block += 1
        spans.append((first, block))
    return spans


def _keep_off_the_ends(record: ServerRecord, n_blocks: int) -> Optional[ServerRecord]:
    """`record` limited to the middle blocks [1, n_blocks - 1) (None if it holds none of them)."""
    start, end = max(record.start, 1), min(record.end, n_blocks - 1)
    if start >= end:
        return None
    return record.model_copy(update={"start": start, "end": end})


def scoped_records(records: Iterable[ServerRecord], scope: Scope, n_blocks: int, start: int = 0,
                   end: Optional[int] = None, *, now: float) -> tuple[Radius, Radius, list[ServerRecord]]:
    """(radius, privacy radius, records) a plan of blocks [start, end) may use: the first radius of the spec
    whose servers cover the blocks with the model's first and last blocks on servers inside the privacy
    radius (narrowest first when not fixed; servers outside it keep their middle blocks only). RadiusError
    naming the widest radius and its uncovered blocks when none fits."""
    end = n_blocks if end is None else end
    classified = [(r, radius_of(r, scope.my_owner_id, scope.trusted_owner_ids, now=now)) for r in records]
    last_gap: list[tuple[int, int]] = []
    for radius in scope.spec.steps:
        inside = [(r, c) for r, c in classified if radius.includes(c)]
        gaps = _uncovered(n_blocks, [r for r, _ in inside], start, end)
        if gaps:
            last_gap = gaps
            continue
        privacies = [scope.privacy] if scope.privacy is not None else [p for p in Radius if radius.includes(p)]
        for privacy in privacies:
            usable = [r if privacy.includes(c) and (r.ring or not scope.ring_ends) else _keep_off_the_ends(r, n_blocks)
                      for r, c in inside]
            usable = [r for r in usable if r is not None]
            last_gap = _uncovered(n_blocks, usable, start, end)
            if not last_gap:
                return radius, privacy, usable
    widest = scope.spec.widest
    ends = f"; the first and last blocks need servers inside radius {scope.privacy.value!r} (--privacy)" \
        if scope.privacy is not None else ""
    ring = " that can ring (a lite client's chain: they embed its token ids and sample)" if scope.ring_ends else ""
    if widest == Radius.PUBLIC:  # every server is inside: only the rule for the ends can have failed
        raise RadiusError(f"no chain covers blocks {_spans(last_gap)} with the model's first and last blocks on "
                          f"servers inside radius {(scope.privacy or Radius.PUBLIC).value!r} (--privacy){ring}",
                          widest, last_gap)
    raise RadiusError(f"no chain inside radius {str(scope.spec)!r} covers blocks {_spans(last_gap)}{ends}: pair "
                      f"with owners who serve them (swarmllm pair), or widen it (--radius {scope.spec}+public)",
                      widest, last_gap)
