"""The simulator's summary as text (what `swarmllm simulate` prints without --json)."""

from __future__ import annotations

import math


def _f(value: float, scale: float = 1.0, digits: int = 1) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value * scale:.{digits}f}"


def text(r: dict) -> str:
    s, t, l = r["sessions"], r["tokens_per_s_per_session"], r["token_latency_s"]
    lines = [
        f"{r['scenario']} (seed {r['seed']}, {r['simulated_seconds']:.0f} simulated s, {r['events']} events)",
        f"  sessions: {s['started']} started, {s['completed']} completed, {s['failed']} failed"
        + (f" ({', '.join(s['failure_reasons'])})" if s["failure_reasons"] else "") + f", {s['still_running']} running",
        f"  tokens/s per session: mean {_f(t['mean'])}, p50 {_f(t['p50'])}, p5 {_f(t['p5'])}",
        f"  time to first token: mean {_f(r['ttft_s']['mean'], 1000, 0)} ms, p95 {_f(r['ttft_s']['p95'], 1000, 0)} ms",
        f"  per-token latency: p50 {_f(l['p50'], 1000)} ms, p95 {_f(l['p95'], 1000)} ms, p99 {_f(l['p99'], 1000)} ms",
        f"  aggregate: {_f(r['aggregate_tokens_per_s'])} tokens/s over {_f(r['concurrent_sessions'])} concurrent sessions"
        f" (capacity at full batches: {_f(r['capacity_tokens_per_s'], 1, 0)} tokens/s)",
        f"  model fully covered {_f(r['covered_share'], 100)}% of the time; {r['failovers']} failovers"
        f" (mean {_f(r['failover_seconds']['mean'], 1, 2)} s)",
        f"  verification: {r['verification']['checks']} checks, {r['verification']['liars_caught']} liars caught, "
        f"{r['verification']['wrong_tokens']} unchecked wrong tokens",
        f"  nodes: {r['nodes']['joined']} joined, {r['nodes']['departed']} left, {r['nodes']['moves']} moves, "
        f"{r['nodes']['online_at_end']} online at the end; {_f(r['hops_per_chain'])} hops per chain",
    ]
    return "\n".join(lines)
