"""A simulation scenario: the YAML file `swarmllm simulate` reads, checked key by key (pure).

    name: a 100-node mixed swarm
    seed: 1
    duration_s: 600            # simulated seconds
    warmup_s: 120              # counted from here on (nodes join, spans settle)
    model: llama-70b           # a shape of hardware.SHAPES, or {name, n_blocks, hidden, ffn, heads, kv_heads, vocab}
    network: {model: geo, hop_overhead_ms: 1.6, regions: {europe: 0.4, us-east: 0.4, asia-east: 0.2}}
    hardware:                  # classes beyond hardware.HARDWARE, or overrides of their fields
      my-pc: {memory_gb: 30, bandwidth_gbps: 60, tflops: 1.5, threads: 8}
    hosts: {shared: {cores: 2}}          # nodes (and clients) on one named host share its cores
    nodes:                               # the machines present at t = 0
      - {mix: {cpu-desktop: 0.5, gpu-12gb: 0.4, datacenter-80gb: 0.1}, count: 100}
      - {hardware: gpu-24gb, blocks: [0, 40], region: europe, delay_ms: 22, host: shared, liar: false}
    churn: {arrivals_per_hour: 50, mean_online_minutes: 120, crash_share: 0.5}   # arrivals use the nodes' mix
    failures: [{at_s: 30, node: 1, how: vanish}]     # scripted departures: leave, kill or vanish (sim/swarm.py)
                                                     # (or after_tokens: N with node, or hop: the first session's)
    server: {batching: true, max_batch: 16, announce_period_s: 5, record_ttl_s: 15, rebalance_period_s: 30}
    clients: {count: 4, region: europe, hardware: gpu-12gb, step_overhead_ms: 0.5,
              concurrency: 16, sessions: 200, prompt_tokens: 200, new_tokens: 128}   # or arrivals_per_s
    decoding: {ring: false, speculative_acceptance: 0.4, verify: sample, wire: int8}

Unknown keys and wrong types are errors that name the key: a typo never silently changes a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Optional

import yaml

from swarmllm.sim.hardware import HARDWARE, SHAPES, Hardware, MeasuredProfile, Shape


class ScenarioError(ValueError):
    """The scenario file is malformed: says which key and why."""


@dataclass
class NodeGroup:
    count: int = 1
    hardware: Optional[str] = None
    mix: dict[str, float] = field(default_factory=dict)
    blocks: Optional[tuple[int, int]] = None
    region: Optional[str] = None
    delay_ms: float = 0.0              # relays network: one-way delay of the relay in front of the node
    link_mbps: float = 1e6             # relays network: that relay's rate
    host: Optional[str] = None
    liar: bool = False
    on_disk: bool = True
    price: float = 0.0


@dataclass
class Clients:
    count: int = 1
    region: Optional[str] = None
    host: Optional[str] = None
    hardware: str = "cpu-desktop"
    step_overhead_ms: float = 0.5      # per step of the chain's software path, as latency (plain and ring)
    delay_ms: float = 0.0
    concurrency: Optional[int] = 1
    arrivals_per_s: Optional[float] = None
    sessions: Optional[int] = None
    prompt_tokens: int = 32
    new_tokens: int = 64
    start_s: float = 0.0


@dataclass
class Scenario:
    name: str = "scenario"
    seed: int = 0
    duration_s: float = 300.0
    warmup_s: float = 0.0
    model: Shape = SHAPES["smollm2-135m"]
    network: dict = field(default_factory=dict)
    hardware: dict[str, Hardware] = field(default_factory=lambda: dict(HARDWARE))
    hosts: dict[str, float] = field(default_factory=dict)
    nodes: list[NodeGroup] = field(default_factory=list)
    churn: dict = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)
    server: dict = field(default_factory=dict)
    clients: Clients = field(default_factory=Clients)
    decoding: dict = field(default_factory=dict)


TOP = {"name": str, "seed": int, "duration_s": (int, float), "warmup_s": (int, float), "model": (str, dict),
       "network": dict, "hardware": dict, "hosts": dict, "nodes": list, "churn": dict, "failures": list,
       "server": dict, "clients": dict, "decoding": dict}
NETWORK = {"model": str, "hop_overhead_ms": (int, float), "loopback_rtt_ms": (int, float), "regions": dict,
           "radius_km": (int, float), "route_factor": (int, float)}
CHURN = {"arrivals_per_hour": (int, float), "mean_online_minutes": (int, float), "crash_share": (int, float),
         "mix": dict, "region": str}
FAILURE = {"at_s": (int, float), "after_tokens": int, "node": int, "hop": int, "how": str}
SERVER = {"batching": bool, "max_batch": int, "announce_period_s": (int, float), "record_ttl_s": (int, float),
          "rebalance_period_s": (int, float)}
DECODING = {"ring": bool, "speculative_acceptance": (int, float, type(None)), "speculative_draft_share": (int, float),
            "speculative_bursty": bool,
            "verify": (str, bool), "wire": str}
PROFILE = {"decode_by_batch": dict, "prefill_per_position": (int, float), "head_per_position": (int, float),
           "steps_by_positions": dict}


def _check(value: Any, spec: dict, where: str) -> dict:
    if not isinstance(value, dict):
        raise ScenarioError(f"{where}: expected a mapping, got {type(value).__name__}")
    for key, item in value.items():
        if key not in spec:
            raise ScenarioError(f"{where}.{key}: unknown key (known: {', '.join(sorted(spec))})")
        if not isinstance(item, spec[key]) or isinstance(item, bool) and spec[key] in ((int, float), int):
            raise ScenarioError(f"{where}.{key}: expected {_names(spec[key])}, got {item!r}")
    return value


def _names(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join({int: "a number", float: "a number", str: "a string", dict: "a mapping", list: "a list",
                        bool: "true/false", type(None): "null"}[t] for t in types)


def _dataclass_from(cls, value: Any, where: str):
    spec = {f.name: object for f in fields(cls)}
    _check(value, spec, where)
    try:
        return cls(**value)
    except TypeError as e:
        raise ScenarioError(f"{where}: {e}") from None


def _hardware(name: str, value: Any, base: dict[str, Hardware]) -> Hardware:
    where = f"hardware.{name}"
    spec = {f.name: object for f in fields(Hardware) if f.name != "name"}
    _check(value, spec, where)
    value = dict(value)
    profile = value.pop("profile", None)
    if profile is not None:
        _check(profile, PROFILE, f"{where}.profile")
        decode = {int(k): float(v) for k, v in profile["decode_by_batch"].items()}
        if not decode or any(k < 1 or v <= 0 for k, v in decode.items()):
            raise ScenarioError(f"{where}.profile.decode_by_batch: positive seconds per batch size >= 1 needed")
        value["profile"] = MeasuredProfile(decode, float(profile["prefill_per_position"]),
                                           float(profile.get("head_per_position", 0.0)),
                                           {int(k): float(v) for k, v in profile.get("steps_by_positions", {}).items()})
    template = base.get(name, Hardware(name, memory_gb=value.get("memory_gb", 8)))
    try:
        return replace(template, **value)
    except TypeError as e:
        raise ScenarioError(f"{where}: {e}") from None


def parse(data: Any) -> Scenario:
    """A Scenario from the YAML's data (a dict); ScenarioError names what is wrong."""
    data = _check(data if data is not None else {}, TOP, "scenario")
    s = Scenario(name=data.get("name", "scenario"), seed=data.get("seed", 0),
                 duration_s=float(data.get("duration_s", 300)), warmup_s=float(data.get("warmup_s", 0)))
    model = data.get("model", "smollm2-135m")
    if isinstance(model, str):
        if model not in SHAPES:
            raise ScenarioError(f"model: unknown shape {model!r} (known: {', '.join(SHAPES)})")
        s.model = SHAPES[model]
    else:
        s.model = _dataclass_from(Shape, model, "model")
    s.network = _check(data.get("network", {}), NETWORK, "network")
    for name, value in _check(data.get("hardware", {}), {k: dict for k in data.get("hardware", {})}, "hardware").items():
        s.hardware[name] = _hardware(name, value, s.hardware)
    s.hosts = {name: float(_check(v, {"cores": (int, float)}, f"hosts.{name}").get("cores", 1))
               for name, v in data.get("hosts", {}).items()}
    for i, group in enumerate(data.get("nodes", [])):
        g = _dataclass_from(NodeGroup, group, f"nodes[{i}]")
        if g.blocks is not None:
            g.blocks = tuple(g.blocks)
            if len(g.blocks) != 2 or not 0 <= g.blocks[0] < g.blocks[1] <= s.model.n_blocks:
                raise ScenarioError(f"nodes[{i}].blocks: [start, end) within the model's {s.model.n_blocks} blocks")
        for hw in ([g.hardware] if g.hardware else []) + list(g.mix):
            if hw not in s.hardware:
                raise ScenarioError(f"nodes[{i}]: unknown hardware {hw!r} (known: {', '.join(s.hardware)})")
        if not g.hardware and not g.mix:
            raise ScenarioError(f"nodes[{i}]: give hardware or mix")
        if g.host is not None and g.host not in s.hosts:
            raise ScenarioError(f"nodes[{i}].host: {g.host!r} is not in hosts")
        s.nodes.append(g)
    s.churn = _check(data.get("churn", {}), CHURN, "churn")
    s.failures = [_check(f, FAILURE, f"failures[{i}]") for i, f in enumerate(data.get("failures", []))]
    for i, f in enumerate(s.failures):
        if ("at_s" in f) == ("after_tokens" in f):
            raise ScenarioError(f"failures[{i}]: give at_s or after_tokens (the first session's tokens)")
        if "hop" in f and "after_tokens" not in f or "hop" not in f and "node" not in f:
            raise ScenarioError(f"failures[{i}]: give node (an index of the nodes listed), or hop with after_tokens")
        if "node" in f and not 0 <= f["node"] < sum(g.count for g in s.nodes):
            raise ScenarioError(f"failures[{i}].node: an index of the nodes listed (0..)")
        if f.get("how", "kill") not in ("leave", "kill", "vanish"):
            raise ScenarioError(f"failures[{i}].how: leave, kill or vanish")
    s.server = _check(data.get("server", {}), SERVER, "server")
    s.clients = _dataclass_from(Clients, data.get("clients", {}), "clients")
    if s.clients.hardware not in s.hardware:
        raise ScenarioError(f"clients.hardware: unknown hardware {s.clients.hardware!r}")
    s.decoding = dict(_check(data.get("decoding", {}), DECODING, "decoding"))
    if isinstance(s.decoding.get("verify"), bool):   # YAML reads a bare off / on as false / true
        s.decoding["verify"] = "sample" if s.decoding["verify"] else "off"
    if s.decoding.get("verify", "off") not in ("off", "sample"):
        raise ScenarioError("decoding.verify: off or sample")
    if s.decoding.get("wire", "bfloat16") not in ("bfloat16", "float16", "float32", "int8"):
        raise ScenarioError("decoding.wire: bfloat16, float16, float32 or int8")
    if s.network.get("model", "geo") not in ("geo", "relays"):
        raise ScenarioError("network.model: geo or relays")
    return s


def load(path: str | Path) -> Scenario:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        raise ScenarioError(f"{path}: not valid YAML: {e}") from None
    return parse(data)
