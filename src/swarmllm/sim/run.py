"""Build a scenario's swarm and clients, play it, and summarise what the sessions saw (pure)."""

from __future__ import annotations

import math
import random
import statistics
from typing import Any

from swarmllm.sim.events import Loop
from swarmllm.sim.network import Network
from swarmllm.sim.scenario import Scenario, parse
from swarmllm.sim.sessions import Sessions, SimClient
from swarmllm.sim.swarm import Host, SimNode, SimSwarm


def simulate(scenario: Scenario | dict) -> dict[str, Any]:
    """Run one scenario (a Scenario or the YAML's dict); returns the summary report.py prints."""
    s = scenario if isinstance(scenario, Scenario) else parse(scenario)
    rng = random.Random(s.seed)
    loop = Loop()
    net = s.network
    network = Network(model=net.get("model", "geo"), hop_overhead=net.get("hop_overhead_ms", 1.6) / 1000,
                      loopback_rtt=net.get("loopback_rtt_ms", 0.5) / 1000, radius_km=net.get("radius_km", 500.0),
                      route_factor=net.get("route_factor", 1.6))
    shares = net.get("regions")
    server = s.server
    swarm = SimSwarm(loop, s.model, rng, announce_period=server.get("announce_period_s", 5.0),
                     record_ttl=server.get("record_ttl_s", 15.0), rebalance_period=server.get("rebalance_period_s", 30.0),
                     batching=server.get("batching", True), max_batch=server.get("max_batch", 16))
    hosts = {name: Host(cores) for name, cores in s.hosts.items()}
    counter = iter(range(10**9))

    def new_node(hardware: str, group) -> SimNode:
        hw = s.hardware[hardware]
        region = group.region if group and group.region else network.pick_region(rng, shares)
        place = network.place(rng, region, hw.up_mbps, hw.down_mbps, delay=(group.delay_ms if group else 0) / 1000,
                              link_mbps=group.link_mbps if group else 1e6)
        host = hosts[group.host] if group and group.host else Host(hw.threads)
        return SimNode(f"sim{next(counter):06d}", hw, place, host, liar=bool(group and group.liar),
                       price=group.price if group else 0.0)

    def pick(mix: dict[str, float]) -> str:
        names = sorted(mix)
        return rng.choices(names, weights=[mix[n] for n in names])[0]

    listed: list[SimNode] = []
    for group in s.nodes:
        for _ in range(group.count):
            node = new_node(group.hardware or pick(group.mix), group)
            listed.append(node)
            # The nodes listed are the swarm as it stands at t = 0: already loaded, each having seen the
            # records of those before it (so a listed node without blocks chooses them as a joining node would).
            loop.at(len(listed) * 0.01, swarm.join, node, group.blocks, group.on_disk, 0.0)

    churn = s.churn
    mix = churn.get("mix") or next((g.mix or {g.hardware: 1.0} for g in s.nodes), {})
    if churn.get("arrivals_per_hour") and mix:
        rate = churn["arrivals_per_hour"] / 3600.0

        def arrive() -> None:
            node = new_node(pick(mix), None)
            swarm.join(node, None, rng.random() < 0.5)
            loop.at(loop.now + rng.expovariate(rate), arrive)
        loop.at(rng.expovariate(rate), arrive)
    if churn.get("mean_online_minutes"):
        mean, crash_share = churn["mean_online_minutes"] * 60.0, churn.get("crash_share", 0.5)
        # Stays are exponential (memoryless): a node present at t = 0 has as long left as a new one.
        swarm.on_join.append(lambda node: loop.at(node.joined_at + rng.expovariate(1.0 / mean), swarm.leave, node,
                                                  "vanish" if rng.random() < crash_share else "leave"))

    decoding = s.decoding
    sessions = Sessions(loop, swarm, network, rng, ring=decoding.get("ring", False),
                        acceptance=decoding.get("speculative_acceptance"), verify=decoding.get("verify") == "sample",
                        wire=decoding.get("wire", "bfloat16"))
    sessions.draft_share = decoding.get("speculative_draft_share", 1.0)
    sessions.bursty = decoding.get("speculative_bursty", False)
    for failure in s.failures:   # scripted departures: at a time, or when the first session has so many tokens
        how = failure.get("how", "kill")
        if "at_s" in failure:
            loop.at(failure["at_s"], swarm.leave, listed[failure["node"]], how)
        else:
            def on_token(session, failure=failure, how=how, fired=[False]):
                if not fired[0] and len(session.out.token_times) >= failure["after_tokens"]:
                    fired[0] = True
                    node = (session._node(failure["hop"]) if "hop" in failure else listed[failure["node"]])
                    loop.after(0.0, swarm.leave, node, how)
            sessions.on_token.append(on_token)
    c = s.clients
    clients = []
    for i in range(c.count):
        hw = s.hardware[c.hardware]
        region = c.region or network.pick_region(rng, shares)
        place = network.place(rng, region, hw.up_mbps, hw.down_mbps, delay=c.delay_ms / 1000)
        host = hosts[c.host] if c.host else Host(hw.threads)
        clients.append(SimClient(f"client{i}", place, host, hw, step_overhead=c.step_overhead_ms / 1000))
    started = [0]

    def open_one() -> None:
        if c.sessions is not None and started[0] >= c.sessions:
            return
        started[0] += 1
        sessions.open(clients[started[0] % len(clients)], c.prompt_tokens, c.new_tokens)

    if c.arrivals_per_s:
        def arrival() -> None:
            open_one()
            loop.after(rng.expovariate(c.arrivals_per_s), arrival)
        loop.at(c.start_s, arrival)
    else:
        sessions.on_end.append(lambda session: open_one())
        for i in range(c.concurrency or 1):
            loop.at(c.start_s + i * 1e-4, open_one)

    # Samples of swarm state for the report: active sessions, supply (capacity) and coverage.
    samples: list[tuple[float, int, float]] = []

    def sample() -> None:
        samples.append((loop.now, len(sessions.active), capacity(swarm)))
        loop.after(max(1.0, s.duration_s / 200), sample)
    loop.at(s.warmup_s, sample)
    loop.at(s.warmup_s, swarm.reset_coverage)
    loop.run(s.duration_s)
    return summarise(s, swarm, sessions, samples, loop)


def capacity(swarm: SimSwarm) -> float:
    """Tokens/s the online nodes could decode at their largest batch: the weakest block's sum over its servers."""
    n = swarm.shape.n_blocks
    diff = [0.0] * (n + 1)
    batch = swarm.max_batch if swarm.batching else 1
    for node in swarm.nodes.values():
        if node.online:
            seconds = node.hardware.step_seconds(swarm.shape, node.end - node.start, [1] * batch, [0] * batch)
            diff[node.start] += batch / seconds
            diff[node.end] -= batch / seconds
    level, low = 0.0, float("inf")
    for b in range(n):
        level += diff[b]
        low = min(low, level)
    return max(0.0, low) if n else 0.0


def _pct(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    values = sorted(values)
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


def summarise(s: Scenario, swarm: SimSwarm, sessions: Sessions, samples, loop: Loop) -> dict[str, Any]:
    window = max(s.duration_s - s.warmup_s, 1e-9)
    counted = [o for o in sessions.outcomes if o.created >= s.warmup_s]
    done = [o for o in counted if o.finished is not None and o.failed is None]
    failed = [o for o in counted if o.failed is not None]
    rates, ttfts, gaps, failover_seconds = [], [], [], []
    for o in counted:   # every session started in the window, finished or not (a slow model's may all run on)
        if o.failed is not None:
            continue
        if o.first_token is not None:
            ttfts.append(o.first_token - o.created)
        if len(o.token_times) > 1:
            rates.append((len(o.token_times) - 1) / max(o.token_times[-1] - o.token_times[0], 1e-9))
            gaps.extend(b - a for a, b in zip(o.token_times, o.token_times[1:]))
        failover_seconds.extend(o.failover_seconds)
    tokens = sum(sum(1 for t in o.token_times if s.warmup_s <= t <= s.duration_s) for o in sessions.outcomes)
    return {
        "scenario": s.name,
        "seed": s.seed,
        "simulated_seconds": s.duration_s,
        "warmup_s": s.warmup_s,
        "events": loop.events,
        "sessions": {"started": len(counted), "completed": len(done), "failed": len(failed),
                     "still_running": len(counted) - len(done) - len(failed),
                     "failure_reasons": sorted({o.failed for o in failed})},
        "tokens_per_s_per_session": {"mean": _mean(rates), "p50": _pct(rates, 0.5), "p5": _pct(rates, 0.05)},
        "ttft_s": {"mean": _mean(ttfts), "p50": _pct(ttfts, 0.5), "p95": _pct(ttfts, 0.95)},
        "token_latency_s": {"p50": _pct(gaps, 0.5), "p95": _pct(gaps, 0.95), "p99": _pct(gaps, 0.99)},
        "aggregate_tokens_per_s": tokens / window,
        "concurrent_sessions": _mean([a for _, a, _ in samples]),
        "capacity_tokens_per_s": _mean([cap for _, _, cap in samples]),
        "covered_share": swarm.covered_share(s.warmup_s, s.duration_s),
        "failovers": sum(o.failovers for o in counted),
        "failover_seconds": {"mean": _mean(failover_seconds), "p95": _pct(failover_seconds, 0.95)},
        "verification": {"checks": sum(o.checks for o in counted), "liars_caught": sum(o.caught for o in counted),
                         "wrong_tokens": sum(o.wrong_tokens for o in counted)},
        "hops_per_chain": _mean([o.hops for o in done]),
        "nodes": {"joined": swarm.joins, "departed": swarm.departures, "moves": swarm.moves,
                  "online_at_end": sum(1 for n in swarm.nodes.values() if n.online)},
        "ttft_after_open_s": {"mean": _mean(o.first_token - o.opened for o in done if o.first_token and o.opened)},
        "per_session": [{"created": o.created, "opened": o.opened, "first_token": o.first_token,
                         "last_token": o.token_times[-1] if o.token_times else None, "tokens": len(o.token_times),
                         "failovers": o.failovers, "failover_seconds": o.failover_seconds}
                        for o in counted] if len(counted) <= 16 else [],
        "busy_share": {peer: round(n.busy_seconds / max(loop.now, 1e-9), 4) for peer, n in swarm.nodes.items()}
        if len(swarm.nodes) <= 64 else {},   # per node (small swarms): the share of the run it computed
    }


def _mean(values) -> float:
    values = list(values)
    return statistics.fmean(values) if values else math.nan
