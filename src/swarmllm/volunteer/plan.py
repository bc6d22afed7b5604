"""What a volunteer machine should serve: pure functions from (machine, caps, swarm) to a plan.

`plan_volunteer(machine, caps, candidates)` chooses the model, the blocks, the compute dtype and
the memory budget for `swarmllm volunteer` (and the setup wizard's recommendation):
1. Room: the memory the node may use is `--max-memory`, else 75% of what is available now
   (the volunteer's own programs keep the rest). The KV cache takes a quarter of that, at most
   512 MiB (`swarmllm serve`'s default), and the rest holds weights: a block costs its
   parameters x the compute dtype's bytes (4 for float32, 2 for bfloat16; weights are
   dequantized at load, see server/backend.py).
2. Which models can be served at all: those whose weights are on disk, or can be fetched into the
   free disk (a catalog package or a URL), with room for at least one block.
3. Which one: the swarm's need (server/model_choice.choose_model: demand against the throughput
   already announced per block, a model on disk preferred), restricted to the models that fit.
4. Which blocks: as many as keep this node's stage time at the swarm's median
   (partitioner.node_span_length, from a measured block rate when the caller has one), within the
   room, placed on the worst-served window (block_selection.choose_span).
5. What it adds: the span's tokens/s (block rate / span length), and the weakest block's
   throughput before and after, which is what a chain through the model gains.

Nothing here does I/O: the caller detects the machine (runtime/machine.py), reads the swarm
(volunteer/run.py) and may measure one block. GPUs are detected and reported, but spans are
served on the CPU today (server/backend.py has no device placement yet), and the plan says so.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

from swarmllm.runtime.machine import Machine
from swarmllm.server.block_selection import block_coverage, choose_span
from swarmllm.server.model_choice import ModelView, choose_model, pressure
from swarmllm.server.partitioner import node_span_length

MEMORY_SHARE = 0.75              # of the available memory, when --max-memory is not given
KV_SHARE = 0.25                  # of the node's memory, for the KV cache ...
KV_MAX_BYTES = 512 * 2**20       # ... at most this (serve's default --cache-memory-mb)
KV_MIN_BYTES = 32 * 2**20        # below this a node cannot hold a useful session
DISK_RESERVE = 2 * 2**30         # free disk a download must leave


@dataclass(frozen=True)
class Caps:
    """What the volunteer allows. None = no limit of the volunteer's own (the planner's defaults)."""

    max_memory_bytes: Optional[int] = None
    max_gpu_memory_bytes: Optional[int] = None
    threads: Optional[int] = None
    max_upload_bps: Optional[float] = None     # bits per second
    max_download_bps: Optional[float] = None
    schedule: Optional[str] = None             # "22:00-07:00" or "09:00-12:00,14:00-18:00" (local time)
    when_idle: bool = False
    busy_cpu_percent: float = 50.0             # with when_idle: others' CPU use (% of one core) that means in use

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Candidate:
    """A model the node could serve, with the swarm's state of it (from the caller's reads)."""

    view: ModelView                 # its servers and demand, as model_choice sees them
    params_per_block: int           # weights of its largest block
    download_bytes: int = 0         # what must be fetched first (0 = on disk)
    block_rate: Optional[float] = None  # measured here: decode tokens/s through one block


@dataclass(frozen=True)
class VolunteerPlan:
    model_id: str
    start: int
    end: int
    n_blocks: int
    device: str                  # "cpu" | "cuda" | "mps"
    dtype: str
    quant: str
    threads: int
    memory_bytes: int            # weights + KV budget the span will use
    cache_memory_bytes: int      # the KV budget alone (serve's --cache-memory-mb)
    tokens_per_second: float     # the span's own decode rate (0 when no block rate was measured)
    weakest_block_before: float  # the model's weakest block's announced tokens/s without this node
    weakest_block_after: float   # ... and with it
    download_bytes: int          # what must be fetched (0 if on disk)
    reasons: tuple[str, ...]     # sentences saying why

    def to_json(self) -> dict:
        data = asdict(self)
        data["reasons"] = list(self.reasons)
        return data


def node_memory(machine: Machine, caps: Caps) -> int:
    """Bytes the node may use: the cap, else a share of what is available now (never more than that)."""
    if caps.max_memory_bytes is not None:
        return min(caps.max_memory_bytes, machine.memory_bytes)
    return int(machine.available_bytes * MEMORY_SHARE)


def kv_budget(memory: int) -> int:
    return max(KV_MIN_BYTES, min(KV_MAX_BYTES, int(memory * KV_SHARE)))


def dtype_for(machine: Machine) -> tuple[str, int]:
    """The compute dtype `auto` resolves to on this machine (engine/dtypes.py) and its bytes per weight."""
    native_bf16 = any(flag in machine.isa for flag in ("avx512_bf16", "amx_bf16"))
    return ("bfloat16", 2) if native_bf16 else ("float32", 4)


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def plan_volunteer(machine: Machine, caps: Caps, candidates: Sequence[Candidate],
                   model: Optional[str] = None) -> tuple[Optional[VolunteerPlan], Optional[str]]:
    """(the plan, None), or (None, a sentence saying why nothing fits). `model` forces a model."""
    memory = node_memory(machine, caps)
    cache = kv_budget(memory)
    dtype, weight_bytes = dtype_for(machine)
    threads = max(1, min(caps.threads or machine.physical_cores, machine.logical_cores))
    if model is not None:
        candidates = [c for c in candidates if c.view.model_id == model]
        if not candidates:
            return None, f"the model {model!r} is not one this machine can get (see `swarmllm models`)"
    room = memory - cache
    fits, refused = [], []
    for c in candidates:
        block_bytes = c.params_per_block * weight_bytes
        if room < block_bytes:
            refused.append(f"{c.view.model_id} needs {_mib(block_bytes + cache)} for one block and its KV cache")
        elif c.download_bytes and c.download_bytes + DISK_RESERVE > machine.disk_free_bytes:
            refused.append(f"{c.view.model_id} needs {_mib(c.download_bytes)} of disk, "
                           f"{_mib(machine.disk_free_bytes)} is free")
        else:
            fits.append(c)
    if not fits:
        why = "; ".join(refused) or "no model is on disk or installable"
        return None, (f"nothing fits in the {_mib(memory)} this node may use: {why}. Raise --max-memory or free "
                      "memory or disk")
    chosen_id = choose_model([c.view for c in fits])
    chosen = next(c for c in fits if c.view.model_id == chosen_id)
    view = chosen.view
    block_bytes = chosen.params_per_block * weight_bytes
    max_blocks = max(1, min(view.n_blocks, room // block_bytes))
    length = node_span_length(view.n_blocks, chosen.block_rate, max_blocks, view.others)
    start, end = choose_span(view.n_blocks, length, view.others)
    counts, throughput = block_coverage(view.n_blocks, view.others)
    rate = chosen.block_rate / (end - start) if chosen.block_rate else 0.0
    after = [t + (rate if start <= b < end else 0.0) for b, t in enumerate(throughput)]
    allowed = "--max-memory" if caps.max_memory_bytes else "three quarters of what is free now"
    reasons = [_why_model(view, fits), _why_span(view, start, end, counts, max_blocks, chosen.block_rate),
               f"memory: {_mib(memory)} allowed ({allowed}), {_mib((end - start) * block_bytes)} of {dtype} weights "
               f"and {_mib(cache)} of KV cache"]
    if machine.gpus:
        names = ", ".join(f"{g.name} ({g.backend}, {_mib(g.memory_bytes)})" for g in machine.gpus)
        reasons.append(f"GPU found: {names}; spans are served on the CPU for now (no GPU placement in the "
                       "server yet), so --max-gpu-memory has no effect")
    return VolunteerPlan(
        model_id=view.model_id, start=start, end=end, n_blocks=view.n_blocks, device="cpu", dtype=dtype,
        quant="none", threads=threads, memory_bytes=(end - start) * block_bytes + cache, cache_memory_bytes=cache,
        tokens_per_second=rate, weakest_block_before=min(throughput, default=0.0),
        weakest_block_after=min(after, default=0.0), download_bytes=chosen.download_bytes,
        reasons=tuple(reasons)), None


def _why_model(view: ModelView, fits: Sequence[Candidate]) -> str:
    if len(fits) == 1:
        return f"{view.model_id}: the only model that fits and is on disk or installable"
    p = pressure(view)
    if math.isinf(p):
        return f"{view.model_id}: demanded ({view.demand:,.0f} tokens/min) with blocks nobody serves"
    if p > 0:
        return f"{view.model_id}: the highest demand against its served throughput ({view.demand:,.0f} tokens/min)"
    return f"{view.model_id}: no gateway reports demand; it is the least served model{' on disk' if view.on_disk else ''}"


def _why_span(view: ModelView, start: int, end: int, counts: list[int], max_blocks: int,
              block_rate: Optional[float]) -> str:
    uncovered = sum(1 for b in range(start, end) if counts[b] == 0)
    where = (f"{uncovered} of them served by nobody yet" if uncovered
             else f"the worst-served window (at least {min(counts[start:end])} other servers per block)")
    if block_rate and any(r.throughput > 0 for r in view.others):
        size = f"sized to the swarm's median stage time from {block_rate:.1f} blocks/s measured here"
    else:
        size = "a third of the model (" + ("no other server to compare speeds with" if block_rate
                                           else "no speed measured here") + ")"
    return f"blocks [{start}, {end}) of {view.n_blocks}: {where}; {size}, at most {max_blocks} fit in memory"
