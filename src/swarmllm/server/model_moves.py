"""What a node without `--model` reads to choose a model: the views model_choice.py plans from.

`candidate_models()` lists the catalog models this machine can load without downloading
(their files are on disk); `read_views()` reads, for each candidate, the online server records
of the other nodes under its block keys and the gateways' demand records under its demand key,
checks them (protocol.parse_records / parse_demand_records) and returns `ModelView`s. The
choice itself is model_choice's (pure); the move is server/node.py's.
"""

from __future__ import annotations

import asyncio
from typing import Mapping

from swarmllm.models.catalog import CATALOG
from swarmllm.protocol import ServerState, block_key, parse_records
from swarmllm.protocol.demand import demand_key
from swarmllm.protocol.records import parse_demand_records
from swarmllm.server.block_selection import planning_view
from swarmllm.server.model_choice import ModelView, aggregate_demand
from swarmllm.swarm import dht_time


def candidate_models() -> dict[str, int]:
    """{catalog name: n_blocks} of the catalog models whose weights are on disk now."""
    return {name: entry.n_blocks for name, entry in CATALOG.items()
            if entry.installed is not None and entry.installed() is not None}


async def read_views(swarm, candidates: Mapping[str, int], me: str, trusted: frozenset = frozenset(),
                     timeout: float = 10.0) -> list[ModelView]:
    """One ModelView per candidate model, from the DHT; `me` (this node's peer id) is left out of the records."""
    keys = [demand_key(m) for m in candidates] + [block_key(m, b) for m, n in candidates.items() for b in range(n)]
    found = await asyncio.wait_for(swarm.get_records(keys), timeout)
    now, views = dht_time(), []
    for model_id, n_blocks in candidates.items():
        records = [r for r in parse_records(found, model_id, n_blocks, now=now)
                   if r.state == ServerState.ONLINE and r.peer_id != me]
        demand = aggregate_demand(parse_demand_records(found.get(demand_key(model_id), {}), model_id, now=now),
                                  trusted)
        views.append(ModelView(model_id, n_blocks, tuple(planning_view(records)), demand, on_disk=True))
    return views
