"""Benchmark: a 3-node smollm2-135m swarm behind emulated WAN links (netem relays).

For each network profile it starts a swarm whose nodes sit behind delaying, rate-limiting
relays, measures the ping RTT to each node, and generates greedily with each wire format:
decode tokens/s, time to first token, bytes per token per hop, and the latency-bound
efficiency. A token crosses four links (client -> A -> B -> C -> client), each costing the
one-way delay of the node dialled, so the best possible decode rate is
    1 / (sum of one-way delays around the chain + compute time of all spans)
with compute time = sum over the chain of 1 / (the span's announced decode tokens/s).
Efficiency = measured decode tokens/s divided by that bound (the client's own embedding,
LM head and sampling are not in the bound, so they count against efficiency).

    python benchmarks/wan.py [--profiles lan,continent] [--wire float32,int8] [--tokens 16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from swarmllm.client.generation import generate_text  # noqa: E402
from swarmllm.client.swarm_client import SwarmClient  # noqa: E402
from swarmllm.engine.sampling import SamplingParams  # noqa: E402
from swarmllm.local_swarm import LocalSwarm, even_spans  # noqa: E402
from swarmllm.protocol import Step, encode_frame, encode_tensor  # noqa: E402

MODEL = "smollm2-135m"
PROMPT = "Explain in a few paragraphs how bees build their hives and why the cells are hexagonal."


def bench_profile(profile: str, wires: list[str], params: SamplingParams, log_dir: Path) -> dict:
    swarm = LocalSwarm(MODEL, even_spans(30, 3), network=profile, log_dir=log_dir)
    swarm.start(timeout=300)
    try:
        with SwarmClient.connect(swarm.initial_peers) as client:
            measured = client.ping([n.ready["peer_id"] for n in swarm.nodes], timeout=10)
            rtts = [measured.get(n.ready["peer_id"]) for n in swarm.nodes]
            generate_text(MODEL, PROMPT, SamplingParams(max_new_tokens=2), client=client)  # warm-up
            throughput = {r.peer_id: r.throughput for r in client.find_servers(MODEL, 30)}
            chain_profiles = [swarm.profiles[n.name] for n in swarm.nodes]  # even spans: chain order = node order
            delays = sum(p.one_way_seconds for p in chain_profiles) + chain_profiles[-1].one_way_seconds
            compute = sum(1 / throughput[n.ready["peer_id"]] for n in swarm.nodes)
            bound = 1 / (delays + compute)
            runs = {}
            for wire in wires:
                r = generate_text(MODEL, PROMPT, params, client=client, wire_dtype=wire)
                runs[wire] = {"decode_tokens_per_second": r["decode_tokens_per_second"],
                              "time_to_first_token": r["time_to_first_token"], "token_ids": r["token_ids"],
                              "bytes_per_token_per_hop": frame_bytes(wire),
                              "efficiency": r["decode_tokens_per_second"] / bound}
    finally:
        swarm.stop()
    return {"profile": profile, "node_profiles": [p.name for p in swarm.profiles.values()],
            "one_way_delays_seconds": delays, "compute_seconds": compute, "latency_bound_tokens_per_second": bound,
            "ping_rtt_ms": [None if r is None else r * 1000 for r in rtts],
            "median_ping_rtt_ms": statistics.median(r * 1000 for r in rtts if r is not None), "runs": runs}


def frame_bytes(wire: str, hidden: int = 576) -> int:
    """Bytes on the wire for one decode step's frame (header + payload) in `wire` format."""
    meta, raw = encode_tensor(torch.zeros(1, 1, hidden).normal_(), wire)
    return len(encode_frame(Step(session_id="s" * 32, step_id=1000, start_position=1000, tensor=meta), raw))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", default="lan,city,continent,intercontinental,mixed", help="netem profiles, comma-separated; mixed = nodes differ")
    parser.add_argument("--wire", default="float32,int8", help="wire formats, comma-separated")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logs = Path(tempfile.mkdtemp(prefix="swarmllm-wan-"))
    params = SamplingParams(max_new_tokens=args.tokens)
    results = {"benchmark": "wan", "model": MODEL, "new_tokens": args.tokens, "cpus": os.cpu_count(),
               "profiles": [bench_profile(p, args.wire.split(","), params, logs / p) for p in args.profiles.split(",")]}
    (out / "wan.json").write_text(json.dumps(results, indent=2))
    (out / "wan.md").write_text(markdown(results))
    print(markdown(results))


def markdown(r: dict) -> str:
    lines = [f"# WAN emulation ({r['model']}, 3 nodes behind netem relays, {r['new_tokens']} new tokens, "
             f"{r['cpus']} CPUs)", "",
             "| profile | median ping RTT (ms) | wire | bytes/token/hop | decode tokens/s | bound tokens/s "
             "| efficiency | time to first token (ms) |",
             "|---|---|---|---|---|---|---|---|"]
    for p in r["profiles"]:
        for wire, run in p["runs"].items():
            lines.append(f"| {p['profile']} | {p['median_ping_rtt_ms']:.1f} | {wire} | {run['bytes_per_token_per_hop']} | "
                         f"{run['decode_tokens_per_second']:.1f} | {p['latency_bound_tokens_per_second']:.1f} | "
                         f"{run['efficiency']:.2f} | {run['time_to_first_token'] * 1000:.0f} |")
    lines += ["", "bound = 1 / (one-way delays around the chain + sum of the spans' 1 / announced tokens/s); "
              "efficiency = decode tokens/s / bound."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
