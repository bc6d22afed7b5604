"""How long nodes without --model take to follow a demand shift from one model to another,
and that no model is left uncovered meanwhile.

Setup: a bootstrap, a gateway (demand published every second) and N nodes (default 3)
started without --model, each able to hold a whole model (--num-blocks 30). Phase 1: a
load generator sends requests for smollm2-135m, then the nodes start one by one and follow
that demand. Phase 2: the load switches to gemma3-270m (asked for before anyone serves it:
those requests get 404 but count as demand). From the switch on, the swarm's coverage of each
model (the fewest online servers over its blocks, read from the DHT) is sampled every 0.5 s.
Reported: seconds from the switch until gemma3 is fully covered and until the placement is
stable, and the minimum coverage of each model over the whole phase (0 would be a gap).

    python benchmarks/demand_shift.py [--nodes 3] [--quick]
Writes benchmarks/results/demand_shift.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import httpx

from swarmllm.client.routing import usable
from swarmllm.client.swarm_client import SwarmClient
from swarmllm.harness.local_swarm import LocalSwarm, free_port

SMOL, GEMMA = "smollm2-135m", "gemma3-270m"
BLOCKS = {SMOL: 30, GEMMA: 18}


def coverage(client: SwarmClient, model: str) -> int:
    counts = [0] * BLOCKS[model]
    for r in client.find_servers(model, BLOCKS[model]):
        if usable(r):
            for b in range(r.start, min(r.end, BLOCKS[model])):
                counts[b] += 1
    return min(counts)


def load(url: str, model: list, stop: threading.Event) -> None:
    """Keep asking for model[0] (a one-token completion at a time); errors (404 before it is served) count too."""
    while not stop.is_set():
        try:
            httpx.post(f"{url}/v1/completions", json={"model": model[0], "prompt": "Hello", "max_tokens": 1},
                       timeout=60)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)


def run(nodes: int, rebalance: float, timeout: float, log_dir: Path) -> dict:
    with LocalSwarm(SMOL, [], log_dir=log_dir, node_args=("--throughput", "20")) as swarm:
        port = free_port()
        swarm.wait_ready([swarm.add_gateway(port, ["--status-period", "1", "--demand-period", "1",
                                                   "--requests-per-minute", "100000",
                                                   "--tokens-per-minute", "10000000"])], timeout=120)
        url, model, stop = f"http://127.0.0.1:{port}", [SMOL], threading.Event()
        threading.Thread(target=load, args=(url, model, stop), daemon=True).start()
        time.sleep(3)
        procs = []
        for i in range(nodes):
            procs.append(swarm.add_node(None, None, name=f"auto{i}", auto_model=True,
                                        extra_args=("--num-blocks", "30", "--rebalance-period", str(rebalance))))
            swarm.wait_ready([procs[-1]], timeout=240)
        first = [p.ready["model"] for p in procs]
        with SwarmClient.connect(swarm.initial_peers, keep_state=False) as client:
            model[0] = GEMMA
            shifted, samples, covered_at = time.monotonic(), [], None
            stable_since, last = None, None
            while time.monotonic() - shifted < timeout:
                sample = {"t": round(time.monotonic() - shifted, 2), SMOL: coverage(client, SMOL),
                          GEMMA: coverage(client, GEMMA)}
                samples.append(sample)
                if covered_at is None and sample[GEMMA] > 0:
                    covered_at = sample["t"]
                placement = (sample[SMOL], sample[GEMMA])
                stable_since = stable_since if placement == last else sample["t"]
                last = placement
                if covered_at is not None and sample["t"] - stable_since > 3 * rebalance:
                    break
                time.sleep(0.5)
            stop.set()
        return {"nodes": nodes, "rebalance_period": rebalance, "first_choice": first,
                "seconds_until_gemma_covered": covered_at, "seconds_until_stable": stable_since,
                "final_coverage": {SMOL: samples[-1][SMOL], GEMMA: samples[-1][GEMMA]},
                "min_coverage_after_shift": {SMOL: min(s[SMOL] for s in samples),
                                             GEMMA: min(s[GEMMA] for s in samples[[s["t"] for s in samples].index(
                                                 covered_at):]) if covered_at is not None else 0},
                "sample_gaps": [round(min(b["t"] - a["t"] for a, b in zip(samples, samples[1:])), 2),
                                round(max(b["t"] - a["t"] for a, b in zip(samples, samples[1:])), 2)],
                "samples": samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--rebalance-period", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--quick", action="store_true", help="2 nodes (CI)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp/swarmllm-demand-shift"))
    args = parser.parse_args()
    result = run(2 if args.quick else args.nodes, args.rebalance_period, args.timeout, args.log_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "demand_shift.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Demand shift: smollm2-135m -> gemma3-270m", "",
             f"`python benchmarks/demand_shift.py --nodes {result['nodes']}` "
             f"(rebalance period {result['rebalance_period']} s; coverage read from the DHT 0.5 s after the previous "
             f"read ended: {len(result['samples'])} samples, "
             f"gaps {result['sample_gaps'][0]}-{result['sample_gaps'][1]} s)",
             "",
             "| nodes | first choice | s until gemma3 covered | s until stable | min smollm2 coverage | "
             "min gemma3 coverage once covered | final (smollm2, gemma3) |", "|---|---|---|---|---|---|---|",
             f"| {result['nodes']} | {', '.join(result['first_choice'])} | {result['seconds_until_gemma_covered']} | "
             f"{result['seconds_until_stable']} | {result['min_coverage_after_shift'][SMOL]} | "
             f"{result['min_coverage_after_shift'][GEMMA]} | "
             f"({result['final_coverage'][SMOL]}, {result['final_coverage'][GEMMA]}) |"]
    (args.out / "demand_shift.md").write_text("\n".join(lines) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    sys.exit(0 if result["min_coverage_after_shift"][SMOL] > 0 and result["seconds_until_gemma_covered"] else 1)


if __name__ == "__main__":
    main()
