"""Which model a node started without `--model` serves, and when it moves (pure functions).

Inputs, all read from the DHT by the caller: per model, the online server records of the
other nodes and the gateways' demand records (protocol/demand.py); per node, which models it
has on disk. Nothing here does I/O.

Demand is a claim, so its influence is bounded (`aggregate_demand`):
- each gateway's tokens/min for a model counts at most `per_gateway_cap`;
- gateways the node does not trust (`trusted`: peer ids) weigh `untrusted_weight` (< 1), so a
  trusted gateway's demand outweighs that many untrusted ones at the cap;
- the sum is over gateways, so a peer that makes many identities (a Sybil) still gains up to
  the cap per identity: this bounds one identity's pull, not a Sybil's (documented limit).
Whatever demand says, the chooser never makes a node leave blocks nobody else serves.

Pressure of a model = its demand / the throughput it would have without this node (the
lowest summed announced throughput over its blocks, tokens/s). A model with demand and a
block nobody else serves has infinite pressure. `choose_model` (start-up) takes the model of
highest pressure, multiplied by `on_disk_bonus` for models on disk; with no demand anywhere,
the on-disk model whose weakest block is least served (of those, the one with the most blocks served
already: completing it makes a chain). `plan_model_move` (a serving node)
moves only when the other model's pressure exceeds its own model's by the factor
(1 + hysteresis), and never when some block of its span has no other server.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional

from swarmllm.protocol import ServerRecord
from swarmllm.protocol.demand import DemandRecord
from swarmllm.server.block_selection import block_coverage

PER_GATEWAY_CAP = 200_000.0   # tokens/min one gateway's claim counts for at most (per model)
UNTRUSTED_WEIGHT = 0.25       # what an untrusted gateway's (capped) demand counts for
HYSTERESIS = 0.5              # another model must be under 1.5x the pressure to move there
ON_DISK_BONUS = 2.0           # a model on disk needs no download: its pressure counts double at start


@dataclass(frozen=True)
class ModelView:
    """One model as a node sees it when choosing."""

    model_id: str
    n_blocks: int
    others: tuple[ServerRecord, ...]   # online records of the other nodes serving it (planning_view applied)
    demand: float                      # aggregate_demand of its gateways' records, tokens/min
    on_disk: bool                      # this node can load it without downloading
    arriving: float = 0.0              # throughput of nodes that claimed a move to it (not announced there yet)


def aggregate_demand(records: Iterable[DemandRecord], trusted: frozenset = frozenset(),
                     per_gateway_cap: float = PER_GATEWAY_CAP, untrusted_weight: float = UNTRUSTED_WEIGHT) -> float:
    """A model's demand in tokens/min from its gateways' records (one per gateway), bounded as the docstring says."""
    newest: dict[str, DemandRecord] = {}
    for record in records:
        if record.gateway_id not in newest or record.announced_at > newest[record.gateway_id].announced_at:
            newest[record.gateway_id] = record
    return sum(min(r.tokens_per_minute, per_gateway_cap) * (1.0 if r.gateway_id in trusted else untrusted_weight)
               for r in newest.values())


def capacity(view: ModelView) -> float:
    """The throughput of the model's weakest block without this node (0 when some block has no server)."""
    counts, throughput = block_coverage(view.n_blocks, view.others)
    if min(counts, default=0) == 0:
        return view.arriving  # arrivals will cover it; until then nothing does
    return min(throughput) + view.arriving


def pressure(view: ModelView) -> float:
    if view.demand <= 0:
        return 0.0
    served = capacity(view)
    return math.inf if served <= 0 else view.demand / served


def choose_model(views: Iterable[ModelView], on_disk_bonus: float = ON_DISK_BONUS) -> Optional[str]:
    """The model a starting node should serve, or None if it has no candidate."""
    views = list(views)
    if not views:
        return None

    def key(view: ModelView):
        weighted = pressure(view) * (on_disk_bonus if view.on_disk else 1.0)
        counts, throughput = block_coverage(view.n_blocks, view.others)
        # Equally pressed and equally weak: the model closest to being whole first (a half-served model
        # completed gives users a chain; a second half-served model gives nobody one).
        covered = sum(1 for c in counts if c) / max(1, view.n_blocks)
        return (-weighted, not view.on_disk, min(counts), -covered, min(throughput), view.model_id)

    return min(views, key=key).model_id


def plan_model_move(current: ModelView, my_span: tuple[int, int], views: Iterable[ModelView],
                    hysteresis: float = HYSTERESIS) -> Optional[str]:
    """Another model this serving node should move to, or None to stay. `current` excludes this node."""
    counts, _ = block_coverage(current.n_blocks, current.others)
    if any(counts[b] == 0 for b in range(*my_span)):
        return None  # the only server of some block: leaving would uncover it
    mine = pressure(current)
    candidates = [v for v in views if v.model_id != current.model_id and v.on_disk]
    if not candidates:
        return None
    best = max(candidates, key=lambda v: (pressure(v), -capacity(v), v.model_id))
    theirs = pressure(best)
    if theirs > 0 and (math.isinf(theirs) or theirs > mine * (1 + hysteresis)) and not math.isinf(mine):
        return best.model_id
    return None
