"""Projections: Llama-shaped 8B, 70B and 405B models on 10 to 10,000 volunteer nodes (swarmllm.sim).

Every figure is the simulator's (src/swarmllm/sim/), which decides with the product's own routing,
block selection, rebalancing, failover and verification code and was checked against real runs
(benchmarks/sim_calibration.py). Nothing here is measured on real machines of these kinds.

Stated assumptions (benchmarks/results/sim_projections.md repeats them):
- hardware mix (sim/hardware.py HARDWARE, spec-sheet bandwidth and flops, 70% of bandwidth and 40% of
  flops reached): 20% CPU laptops (12 GB, 40 GB/s), 25% CPU desktops (28 GB, 70 GB/s), 20% 8 GB GPUs,
  17% 12 GB GPUs, 15% 24 GB GPUs, 3% 80 GB data-centre GPUs; 4.5-bit weights on CPUs and small GPUs,
  8-bit on 24 GB GPUs, 16-bit on data-centre GPUs;
- regions (sim/network.py, great-circle RTTs x 1.6 route factor + last miles): Europe 35%, US east 25%,
  US west 10%, East Asia 15%, South Asia 7%, South America 5%, Oceania 3%; home uplinks 20-100 Mbit/s;
- churn: a node stays online for an exponential time of mean 3 h, 30% of departures are crashes,
  arrivals keep the population stationary; half of the arrivals have the weights on disk, the rest
  download their span;
- clients: gateways in the same regions, one per 50 nodes (at least 2), each session a 200-token
  prompt and 128 new tokens, greedy; a quarter as many concurrent sessions as nodes, at most 60: from
  1,000 nodes on the simulated sessions are a sample of the load (per-session figures at that load;
  the swarm's capacity comes from its nodes, `sessions at capacity` = capacity / per-session rate),
  since every token is ~9 events in one Python process; 600 simulated seconds, the first 200 not
  counted (300 and 120 from 1,000 nodes on; 1,500 and 300 for 405B, whose sessions take minutes);
- 10,000-node runs plan without rebalancing (rebalance period 0): plan_move over 10,000 records
  every 30-45 s per node is more than this process can simulate in the time given; every smaller
  swarm runs with it.

    python benchmarks/sim_projections.py [--quick] [--only 70b] [--scales 10,100] [--out benchmarks/results]
    (in two processes: --scales 10,100,1000 --json-only a.json; --scales 10000 --no-variants --json-only b.json;
     then --merge a.json b.json)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from swarmllm.sim import simulate

MIX = {"cpu-laptop": 0.20, "cpu-desktop": 0.25, "gpu-8gb": 0.20, "gpu-12gb": 0.17, "gpu-24gb": 0.15,
       "datacenter-80gb": 0.03}
REGIONS = {"europe": 0.35, "us-east": 0.25, "us-west": 0.10, "asia-east": 0.15, "south-asia": 0.07,
           "south-america": 0.05, "oceania": 0.03}
MODELS = ("llama-8b", "llama-70b", "llama-405b")
SCALES = (10, 100, 1000, 10000)
MEAN_ONLINE_MIN = 180.0
VARIANTS = {   # where each option moves the numbers, on one reference swarm
    "baseline (bf16 wire, plain)": {},
    "int8 wire (compression)": {"wire": "int8"},
    "ring decoding": {"ring": True},
    "speculative (acceptance 0.39)": {"speculative_acceptance": 0.39},
    "verification (sample)": {"verify": "sample"},
}


def scenario(model: str, nodes: int, decoding: dict | None = None, quick: bool = False, seed: int = 1) -> dict:
    big = nodes >= 10000
    duration, warmup = (300.0, 120.0) if nodes >= 1000 or quick else (600.0, 200.0)
    if model == "llama-405b" and not quick:   # its sessions take minutes: a longer window, or none finishes
        duration, warmup = 1500.0, 300.0
    concurrency = min(60, max(2, nodes // 4))
    return {
        "name": f"{model} on {nodes} nodes", "seed": seed, "duration_s": duration, "warmup_s": warmup,
        "model": model,
        "network": {"model": "geo", "hop_overhead_ms": 1.6, "regions": REGIONS},
        "nodes": [{"mix": MIX, "count": nodes}],
        "churn": {"arrivals_per_hour": nodes / (MEAN_ONLINE_MIN / 60), "mean_online_minutes": MEAN_ONLINE_MIN,
                  "crash_share": 0.3},
        "server": {"batching": True, "max_batch": 16, "rebalance_period_s": 0 if big else 30,
                   "announce_period_s": 5, "record_ttl_s": 15},
        "clients": {"count": max(2, nodes // 50), "hardware": "gpu-12gb", "concurrency": concurrency,
                    "prompt_tokens": 200, "new_tokens": 128},
        "decoding": {"wire": "bfloat16", "ring": False, "verify": "off", **(decoding or {})},
    }


def row(result: dict, seconds: float) -> dict:
    per_session = result["tokens_per_s_per_session"]["mean"]
    cap = result["capacity_tokens_per_s"]
    return {
        "tokens_per_s_per_session": per_session,
        "ttft_p50_s": result["ttft_s"]["p50"], "ttft_p95_s": result["ttft_s"]["p95"],
        "token_latency_p95_s": result["token_latency_s"]["p95"],
        "concurrent_sessions": result["concurrent_sessions"],
        "aggregate_tokens_per_s": result["aggregate_tokens_per_s"],
        "capacity_tokens_per_s": cap,
        "sessions_at_capacity": cap / per_session if per_session and not math.isnan(per_session) else 0.0,
        "covered_share": result["covered_share"],
        "sessions": result["sessions"], "failovers": result["failovers"],
        "hops_per_chain": result["hops_per_chain"], "nodes": result["nodes"],
        "verification": result["verification"], "wall_seconds": round(seconds, 1),
        "window_s": result["simulated_seconds"] - result.get("warmup_s", 0.0),
    }


def fmt(value, digits=1) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def markdown(results: dict) -> str:
    lines = ["# Projections: Llama-shaped models on volunteer swarms (simulated)", "",
             "`python benchmarks/sim_projections.py` — every figure from swarmllm.sim (calibrated: "
             "benchmarks/results/sim_calibration.md); assumptions in the script's docstring, repeated here:", "",
             f"- hardware mix: {', '.join(f'{k} {v:.0%}' for k, v in MIX.items())}",
             f"- regions: {', '.join(f'{k} {v:.0%}' for k, v in REGIONS.items())}",
             f"- churn: mean stay {MEAN_ONLINE_MIN:.0f} min, 30% crashes; 200-token prompts, 128 new tokens",
             "- concurrency = nodes / 4, at most 60 sessions (a sample of the load from 1,000 nodes on: capacity "
             "comes from the nodes); 10,000 nodes: no rebalancing (simulation cost)",
             "", "| model | nodes | tok/s per session | TTFT p50 / p95 (s) | token latency p95 (ms) | concurrent sessions "
             "(simulated) | aggregate tok/s | capacity tok/s (full batches) | sessions at capacity | fully covered | "
             "hops | failovers | sessions done / failed |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, r in results["grid"].items():
        model, nodes = key.split("@")
        s = r["sessions"]
        waiting = s["started"] > 0 and math.isnan(r["ttft_p50_s"])   # nobody's first token within the window
        window = r.get("window_s") or (180 if int(nodes) >= 1000 else 400)   # (rows from before it was stored)
        ttft = f"> {window:.0f}" if waiting else f"{fmt(r['ttft_p50_s'])} / {fmt(r['ttft_p95_s'])}"
        if r["covered_share"] == 0:
            ttft = "never covered"
        lines.append(f"| {model} | {nodes} | {fmt(r['tokens_per_s_per_session'], 2)} | {ttft} | "
                     f"{fmt(r['token_latency_p95_s'] * 1000, 0)} | "
                     f"{fmt(r['concurrent_sessions'], 0)} | {fmt(r['aggregate_tokens_per_s'])} | "
                     f"{fmt(r['capacity_tokens_per_s'], 0)} | {fmt(r['sessions_at_capacity'], 0)} | "
                     f"{r['covered_share']:.0%} | {fmt(r['hops_per_chain'])} | {r['failovers']} | "
                     f"{s['completed']} / {s['failed']} |")
    missing = [f"{m}@{n}" for m in MODELS for n in SCALES if f"{m}@{n}" not in results["grid"]]
    if missing:
        lines += ["", f"Not simulated in this run: {', '.join(missing)} (see the issue note: the 8B run at 10,000 "
                      "nodes had not finished after 40 minutes of one core)."]
    lines += ["", f"## What each option moves ({results['variants_on']})", "",
              "| option | tok/s per session | TTFT p50 (s) | token latency p95 (ms) | aggregate tok/s | checks | "
              "liars caught |", "|---|---|---|---|---|---|---|"]
    for name, r in results["variants"].items():
        lines.append(f"| {name} | {fmt(r['tokens_per_s_per_session'], 2)} | {fmt(r['ttft_p50_s'])} | "
                     f"{fmt(r['token_latency_p95_s'] * 1000, 0)} | {fmt(r['aggregate_tokens_per_s'])} | "
                     f"{r['verification']['checks']} | {r['verification']['liars_caught']} |")
    lines += ["", "Plots: sim_projections_tokens.png (tok/s per session), sim_projections_capacity.png (aggregate "
              "capacity), sim_projections_coverage.png (share of time fully covered).", ""]
    return "\n".join(lines)


def plots(results: dict, out: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    written = []
    for metric, label, name, log in (("tokens_per_s_per_session", "tokens/s per session", "tokens", False),
                                     ("capacity_tokens_per_s", "aggregate capacity, tokens/s", "capacity", True),
                                     ("covered_share", "share of time fully covered", "coverage", False)):
        fig, ax = plt.subplots(figsize=(6, 4))
        for model in MODELS:
            xs = [n for n in SCALES if f"{model}@{n}" in results["grid"]]
            ys = [results["grid"][f"{model}@{n}"][metric] for n in xs]
            if xs:
                ax.plot(xs, [0 if y is None or (isinstance(y, float) and math.isnan(y)) else y for y in ys],
                        marker="o", label=model)
        ax.set_xscale("log")
        if log:
            ax.set_yscale("symlog")
        ax.set_xlabel("volunteer nodes")
        ax.set_ylabel(label)
        ax.set_title(f"{label} (simulated)")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out / f"sim_projections_{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter runs, up to 1,000 nodes")
    parser.add_argument("--only", help="models to run, e.g. 8b,70b")
    parser.add_argument("--scales", help="node counts, e.g. 10,100")
    parser.add_argument("--variants-on", default="llama-70b@100", help="the swarm the options are compared on")
    parser.add_argument("--no-variants", action="store_true", help="only the grid of models x node counts")
    parser.add_argument("--json-only", type=Path, help="write this JSON and nothing else (to --merge later)")
    parser.add_argument("--merge", type=Path, nargs="+", help="compose the tables and plots from these JSONs")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.merge:
        parts = [json.loads(path.read_text()) for path in args.merge]
        results = {**parts[0], "grid": {}, "variants": {}}
        for part in parts:
            results["grid"].update(part["grid"])
            results["variants"].update(part["variants"])
            results["variants_on"] = part["variants_on"] if part["variants"] else results["variants_on"]
        results["grid"] = {f"{m}@{n}": results["grid"][f"{m}@{n}"] for m in MODELS for n in SCALES
                           if f"{m}@{n}" in results["grid"]}
        write(results, args.out)
        return
    models = [m for m in MODELS if not args.only or any(m.endswith(o) for o in args.only.split(","))]
    scales = [int(n) for n in args.scales.split(",")] if args.scales else [n for n in SCALES
                                                                          if not (args.quick and n > 1000)]
    results: dict = {"assumptions": {"mix": MIX, "regions": REGIONS, "mean_online_minutes": MEAN_ONLINE_MIN},
                     "grid": {}, "variants": {}, "variants_on": args.variants_on}
    for model in models:
        for nodes in scales:
            started = time.monotonic()
            r = simulate(scenario(model, nodes, quick=args.quick))
            results["grid"][f"{model}@{nodes}"] = row(r, time.monotonic() - started)
            print(f"{model} x {nodes}: {fmt(r['tokens_per_s_per_session']['mean'], 2)} tok/s per session, "
                  f"covered {r['covered_share']:.0%}, {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    model, nodes = args.variants_on.split("@")
    for name, decoding in ({} if args.no_variants else VARIANTS).items():
        started = time.monotonic()
        r = simulate(scenario(model, int(nodes), decoding, quick=args.quick))
        results["variants"][name] = row(r, time.monotonic() - started)
        print(f"{name}: {fmt(r['tokens_per_s_per_session']['mean'], 2)} tok/s", file=sys.stderr, flush=True)
    if args.json_only:
        args.json_only.write_text(json.dumps(results, indent=2, default=str))
        return
    write(results, args.out)


def write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    try:
        results["plots"] = plots(results, out)
    except ImportError:
        print("no plots: matplotlib is not installed (pip install -e '.[bench]')", file=sys.stderr)
    (out / "sim_projections.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "sim_projections.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
