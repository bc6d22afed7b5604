"""The live view of the swarm the dashboard shows (and scripts read at /api/swarm).

Every `period` seconds: read the model registry and every model's block records from the
DHT, ping the nodes (RTT from the gateway), compute per-block coverage, and sample the
tokens/s served through this gateway. The snapshot is a plain JSON-able dict; readers
never wait on the DHT.

Issue 14's economy in the same snapshot: `demand` has, per model some gateway asks for or some
node serves, the gateways' published demand (their DemandRecords: claims, summed as published)
against the supply the nodes announce (`model_supply`: the weakest block's summed throughput, a
claim too), and a warning for a model that is demanded but not covered; each node row carries the
credits this gateway's ledger settled for it (`credits_of`, None without a ledger).

Issue 16's dashboard, additive fields: each node row carries the counters its record announces
(uptime, memory, CPU, tokens served, bytes up and down: claims) and the tokens/s derived from them;
`timeline`, `coverage_history` and `announced_throughput_history` come from swarm_history.py
(bounded); `chains` are the routes of this gateway's generations in progress (`chains_of`); `join`
is the command that lets another machine join this swarm (`join_command`, from the peers the
gateway was started with).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Callable, Iterable, Optional, Sequence

from swarmllm.client.routing import usable
from swarmllm.client.swarm_client import SwarmClient
from swarmllm.gateway.swarm_history import SwarmHistory
from swarmllm.protocol.demand import DemandRecord
from swarmllm.protocol.records import ServerRecord

logger = logging.getLogger(__name__)


def model_supply(model_id: str, n_blocks: int, records: Iterable[ServerRecord],
                 demand: Sequence[DemandRecord]) -> dict:
    """Demand against supply for one model (pure): tokens/min asked by the gateways vs what the chain's
    weakest block can give (sum of its usable servers' announced tokens/s, x 60; 0 with a gap)."""
    per_block = [0.0] * n_blocks
    for r in records:
        if usable(r):
            for b in range(max(0, r.start), min(n_blocks, r.end)):
                per_block[b] += r.throughput
    covered = n_blocks > 0 and min(per_block) > 0
    supply = 60.0 * min(per_block) if covered else 0.0
    asked = sum(d.tokens_per_minute for d in demand)
    warning = None
    if asked > 0 and not covered:
        warning = "demanded but not covered: no chain of servers serves it"
    elif asked > supply > 0:
        warning = "demand exceeds the announced supply"
    return {"model_id": model_id, "covered": covered, "gateways": len(demand),
            "demand_tokens_per_minute": round(asked, 1),
            "demand_requests_per_minute": round(sum(d.requests_per_minute for d in demand), 2),
            "queue_length": sum(d.queue_length for d in demand),
            "supply_tokens_per_minute": round(supply, 1), "warning": warning}


def join_command(initial_peers: Sequence[str], models: Sequence[str] = (), swarm: str = "default",
                 now: Optional[float] = None) -> dict:
    """What the dashboard's "Join this swarm" box shows: `swarmllm volunteer TOKEN` with an invite to the
    swarm at `initial_peers` (protocol/invite.py), and the same by address; without peers, the local
    network's swarm (what `swarmllm volunteer` finds by itself)."""
    from swarmllm.protocol.invite import encode_invite, make_invite

    peers = [p for p in initial_peers if p]
    if not peers:
        return {"command": "swarmllm volunteer", "token": None, "by_address": None,
                "note": "this gateway was started without --initial-peers: the command joins the swarm on the local "
                        "network"}
    token = encode_invite(make_invite(peers, list(models), swarm, now=time.time() if now is None else now))
    local_only = all("/ip4/127." in p or "/ip6/::1/" in p for p in peers)
    return {"command": f"swarmllm volunteer {token}", "token": token, "join": f"swarmllm join {token}",
            "by_address": f"swarmllm volunteer --initial-peers {','.join(peers)}",
            "note": "loopback addresses only: only this machine can use it" if local_only else None}


class SwarmStatus:
    def __init__(self, client: SwarmClient, tokens_counter: Callable[[], int], period: float = 2.0,
                 history_seconds: float = 300.0, demand_models: Iterable[str] = (),
                 credits_of: Optional[Callable[[], dict[str, int]]] = None,
                 chains_of: Optional[Callable[[], list[dict]]] = None, initial_peers: Sequence[str] = ()):
        """`demand_models`: models whose demand is read even when nobody serves them (the catalog);
        `credits_of`: {node peer id: credits} from the gateway's ledger, if it keeps one; `chains_of`: the
        routes of the gateway's generations in progress; `initial_peers`: where the gateway entered the
        swarm (for the join command)."""
        self.client, self.tokens_counter, self.period = client, tokens_counter, period
        self.demand_models, self.credits_of, self.chains_of = list(demand_models), credits_of, chains_of
        self.initial_peers = list(initial_peers)
        self.history: deque = deque(maxlen=max(2, int(history_seconds / period)))
        self.swarm_history = SwarmHistory(max_samples=max(2, int(history_seconds / period)))
        self._join: Optional[tuple[tuple[str, ...], dict, float]] = None
        self.snapshot: dict = {"updated_at": 0.0, "models": [], "nodes": [], "throughput_history": [],
                               "active_sessions": 0, "demand": [], **self.swarm_history.to_json(), "chains": [],
                               "join": join_command(self.initial_peers)}
        self._last_tokens = (time.time(), tokens_counter())
        self._last_ping = 0.0
        self.changed = asyncio.Event()

    def complete_models(self) -> list[str]:
        return [m["model_id"] for m in self.snapshot["models"] if m["complete"]]

    def served_models(self) -> list[str]:
        """Every model some node announces, complete or not."""
        return [m["model_id"] for m in self.snapshot["models"]]

    @property
    def ready(self) -> bool:
        """Whether the swarm has been read at least once."""
        return self.snapshot["updated_at"] > 0

    def refresh(self) -> dict:
        """One synchronous refresh (runs on a worker thread)."""
        registry = self.client.list_models()
        models, nodes, by_model = [], [], {}
        for model_id, info in sorted(registry.items()):
            n_blocks = info.n_blocks
            records = self.client.find_servers(model_id, n_blocks)
            coverage = [0] * n_blocks
            for r in records:
                if usable(r):
                    for b in range(max(0, r.start), min(n_blocks, r.end)):
                        coverage[b] += 1
            models.append({"model_id": model_id, "n_blocks": n_blocks, "coverage": coverage,
                           "complete": bool(records) and min(coverage) > 0})
            nodes.extend(records)
            by_model[model_id] = (n_blocks, records)
        wanted = sorted(set(by_model) | set(self.demand_models))
        try:
            demand = self.client.read_demand(wanted)
        except Exception as e:  # the dashboard still shows coverage
            logger.warning("reading the demand records failed: %s", e)
            demand = {}
        economy = [model_supply(m, *by_model.get(m, (0, [])), demand.get(m, [])) for m in wanted]
        economy = [e for e in economy if e["model_id"] in by_model or e["gateways"]]
        credits = self.credits_of() if self.credits_of is not None else None
        if time.time() - self._last_ping > 10 or any(r.peer_id not in self.client.rtts for r in nodes):
            self.client.ping({r.peer_id for r in nodes})
            self._last_ping = time.time()
        now, tokens = time.time(), self.tokens_counter()
        last_t, last_tokens = self._last_tokens
        self.history.append({"t": now, "tokens_per_second": (tokens - last_tokens) / max(now - last_t, 1e-6)})
        self._last_tokens = (now, tokens)
        self.swarm_history.observe(nodes, {m: n for m, (n, _) in by_model.items()}, now)
        try:
            chains = self.chains_of() if self.chains_of is not None else []
        except Exception as e:  # the dashboard still shows the rest
            logger.warning("listing the active chains failed: %s", e)
            chains = []
        self.snapshot = {
            "updated_at": now,
            "models": models,
            "nodes": [{"peer_id": r.peer_id, "model_id": r.model_id, "start": r.start, "end": r.end,
                       "throughput": r.throughput, "state": r.state.value, "active_sessions": r.active_sessions,
                       "free_cache_tokens": r.free_cache_tokens, "protocol_version": r.protocol_version,
                       "min_protocol_version": r.min_protocol_version,
                       "compute_dtype": r.compute_dtype, "quant": r.quant, "kv_dtype": r.kv_dtype, "ring": r.ring,
                       "compute_class": r.compute_class.key,
                       "rtt_ms": round(self.client.rtts[r.peer_id] * 1000, 2) if r.peer_id in self.client.rtts else None,
                       "software_version": r.software_version, "price": r.price,
                       "credits": None if credits is None else credits.get(r.peer_id, 0),
                       **self._counters(r)}
                      for r in sorted(nodes, key=lambda r: (r.model_id, r.start))],
            "throughput_history": list(self.history),
            "active_sessions": sum(r.active_sessions for r in nodes),
            "demand": economy,
            **self.swarm_history.to_json(),
            "chains": chains,
            "join": self._join_command(sorted(by_model)),
        }
        return self.snapshot

    def _counters(self, r: ServerRecord) -> dict:
        """A node row's announced counters (claims) and the tokens/s derived from them (swarm_history.py)."""
        rate = self.swarm_history.node_rate(r.peer_id, r.model_id)
        return {"uptime_seconds": r.uptime_seconds, "memory_bytes": r.memory_bytes, "cpu_percent": r.cpu_percent,
                "tokens_served": r.tokens_served, "bytes_sent": r.bytes_sent, "bytes_received": r.bytes_received,
                "announced_tokens_per_second": None if rate is None else round(rate, 2)}

    def _join_command(self, models: list[str]) -> dict:
        """The join command, made again when the models served change (and at most once an hour)."""
        key = tuple(models)
        if self._join is None or self._join[0] != key or time.time() - self._join[2] > 3600:
            self._join = (key, join_command(self.initial_peers, models), time.time())
        return self._join[1]

    async def run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.refresh)
                self.changed.set()
                self.changed = asyncio.Event()
            except Exception as e:  # the DHT being briefly unreachable must not stop the dashboard
                logger.warning("refreshing the swarm status failed: %s", e)
            await asyncio.sleep(self.period)
