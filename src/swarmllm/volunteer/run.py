"""`swarmllm volunteer`: detect the machine, read the swarm, plan, fetch, serve (with the caps).

    survey(peers, caps)    -> Survey: the machine (runtime/machine.py), the swarm's coverage per
                              catalog model (servers and throughput per block, demand), and the
                              plan (volunteer/plan.py), with one block of the planned model measured
                              here when its weights are on disk (so the plan's tokens/s is real)
    server_config(...)     -> the `swarmllm serve` configuration the plan and caps describe
    run_volunteer(...)     -> fetch the model if needed, then run the node until Ctrl-C / SIGTERM
                              (which drain the sessions and leave), pausing by the schedule and
                              the machine's use (volunteer/schedule.py)

A node started by `volunteer` without `--model` keeps following the swarm's demand afterwards
(server/node.py's model moves), within the same memory cap; `--model` pins it. What it reads
from the DHT is checked like everything else (signed records, parse_records); the plan only
decides where this node goes, never what anyone else is trusted with.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass
from typing import Optional, Sequence

from swarmllm.models.catalog import CATALOG
from swarmllm.runtime.machine import Machine, detect_machine
from swarmllm.server.block_selection import block_coverage
from swarmllm.server.model_choice import ModelView
from swarmllm.server.model_moves import read_views
from swarmllm.server.node import ServerConfig
from swarmllm.volunteer.plan import Candidate, Caps, VolunteerPlan, plan_volunteer

logger = logging.getLogger(__name__)

SURVEY_TIMEOUT = 15.0   # seconds for reading the swarm's records


@dataclass(frozen=True)
class Survey:
    machine: Machine
    plan: Optional[VolunteerPlan]
    coverage: list[dict]          # per model: servers and throughput per block, demand (the wizard's map)
    problem: Optional[str]        # a sentence when nothing fits

    def to_json(self) -> dict:
        return {"machine": self.machine.to_json(), "plan": self.plan.to_json() if self.plan else None,
                "coverage": self.coverage, "problem": self.problem}


def _servable() -> dict[str, int]:
    """{catalog name: n_blocks} of the models a volunteer can serve: on disk, or installable from a package."""
    return {name: e.n_blocks for name, e in CATALOG.items() if e.params_per_block is not None
            and ((e.installed is not None and e.installed() is not None) or e.package is not None)}


def _on_disk(name: str) -> bool:
    entry = CATALOG[name]
    return entry.installed is not None and entry.installed() is not None


async def read_swarm(initial_peers: Sequence[str], timeout: float = SURVEY_TIMEOUT) -> list[ModelView]:
    """Each servable catalog model as the swarm shows it now (a client node, gone afterwards)."""
    from swarmllm.swarm import SwarmNode

    models = _servable()
    if not initial_peers:
        return [ModelView(m, n, (), 0.0, _on_disk(m)) for m, n in models.items()]
    swarm = await SwarmNode.create(list(initial_peers), client_mode=True)
    try:
        views = await read_views(swarm, models, swarm.peer_id, timeout=timeout)
    finally:
        await swarm.shutdown()
    return [dataclasses.replace(v, on_disk=_on_disk(v.model_id)) for v in views]


def coverage_map(views: Sequence[ModelView]) -> list[dict]:
    rows = []
    for view in views:
        counts, throughput = block_coverage(view.n_blocks, view.others)
        rows.append({"model": view.model_id, "n_blocks": view.n_blocks, "servers_per_block": counts,
                     "throughput_per_block": [round(t, 2) for t in throughput],
                     "demand_tokens_per_min": round(view.demand, 1), "on_disk": view.on_disk,
                     "covered": bool(counts) and min(counts) > 0})
    return rows


def measure_block_rate(model: str, threads: int) -> Optional[float]:
    """Decode tokens/s through one block of `model` here (loads one block only), or None on failure."""
    from swarmllm.server.backend import SpanBackend

    try:
        probe = SpanBackend.load(CATALOG[model].locate() if model in CATALOG else model, 0, 1, threads)
        return probe.measure_throughput()
    except Exception as e:  # a broken file must not stop the survey: the plan is then sized without speed
        logger.warning("could not measure a block of %s here: %s", model, e)
        return None


def candidates(views: Sequence[ModelView], rates: dict[str, float]) -> list[Candidate]:
    found = []
    for view in views:
        entry = CATALOG[view.model_id]
        download = 0 if view.on_disk else (entry.file_bytes_per_block or 0) * entry.n_blocks
        found.append(Candidate(view, entry.params_per_block, download, rates.get(view.model_id)))
    return found


async def survey(initial_peers: Sequence[str], caps: Caps, model: Optional[str] = None, measure: bool = True,
                 machine: Optional[Machine] = None) -> Survey:
    """The machine, the swarm and the plan; with `measure`, one block of the planned model is timed here."""
    machine = machine or detect_machine()
    views = await read_swarm(initial_peers)
    plan, problem = plan_volunteer(machine, caps, candidates(views, {}), model)
    if plan is not None and measure and _on_disk(plan.model_id):
        rate = await asyncio.get_running_loop().run_in_executor(None, measure_block_rate, plan.model_id, plan.threads)
        if rate:
            plan, problem = plan_volunteer(machine, caps, candidates(views, {plan.model_id: rate}), model)
    return Survey(machine, plan, coverage_map(views), problem)


def server_config(plan: VolunteerPlan, caps: Caps, initial_peers: Sequence[str], pinned_model: Optional[str],
                  **flags) -> ServerConfig:
    """The node the plan describes. Without a pinned model the node chooses (and later moves) by demand,
    with the same memory cap."""
    # The span length is the node's own choice by the same rule (partitioner.node_span_length, within
    # max_memory_bytes), measured again at start: the plan's is what the survey saw a moment earlier.
    values = dict(model=pinned_model, initial_peers=tuple(initial_peers), num_threads=plan.threads,
                  cache_memory_bytes=plan.cache_memory_bytes, max_memory_bytes=caps.max_memory_bytes,
                  max_upload_bps=caps.max_upload_bps, max_download_bps=caps.max_download_bps)
    return ServerConfig(**values, **flags)


def serve_argv(config: ServerConfig, auto_update: bool = False) -> list[str]:
    """The `swarmllm serve` command line equivalent to `config` (what --dry-run shows)."""
    argv = ["swarmllm", "serve"]
    if config.model:
        argv += ["--model", config.model]
    if config.initial_peers:
        argv += ["--initial-peers", ",".join(config.initial_peers)]
    if config.num_blocks:
        argv += ["--num-blocks", str(config.num_blocks)]
    if config.num_threads:
        argv += ["--num-threads", str(config.num_threads)]
    argv += ["--cache-memory-mb", f"{config.cache_memory_bytes / 2**20:.0f}", "--name", config.node_name]
    if config.max_memory_bytes:
        argv += ["--max-memory", f"{config.max_memory_bytes / 2**20:.0f}MiB"]
    for name, flag in (("max_upload_bps", "--max-upload"), ("max_download_bps", "--max-download")):
        value = getattr(config, name)
        if value:
            argv += [flag, f"{value:.0f}"]
    if config.status_port:
        argv += ["--status-port", str(config.status_port)]
    if not config.lan:
        argv += ["--no-lan"]
    if auto_update:
        argv += ["--auto-update"]
    return argv


async def run_volunteer(config: ServerConfig, caps: Caps, on_ready=None, sample_seconds: float = 5.0,
                        update=None) -> bool:
    """Run the node until stopped (signals drain and leave), paused and resumed by the schedule and use,
    updated when `update` (an updater.UpdateConfig) is given; True when it stopped to restart into a
    newly installed release (updater.run_node)."""
    from swarmllm.server.node import ServerNode
    from swarmllm.volunteer.schedule import UseDetector, control, parse_schedule
    from swarmllm.volunteer.updater import run_node

    node = ServerNode(config)
    node.install_signal_handlers()
    schedule = parse_schedule(caps.schedule)
    controller = asyncio.ensure_future(control(node, schedule, caps.when_idle,
                                                 UseDetector(caps.busy_cpu_percent), sample_seconds))
    try:
        return await run_node(node, on_ready, update)
    finally:
        node.stop()
        controller.cancel()
