"""Benchmark: a 3-node smollm2-135m swarm behind emulated WAN links (netem relays).

For each network profile it starts a swarm whose nodes sit behind delaying, rate-limiting
relays, measures the ping RTT to each node, and generates greedily with each wire format:
decode tokens/s, time to first token, bytes per token per hop, and the latency-bound
efficiency. A token crosses four links (client -> A -> B -> C -> client), each costing the
one-way delay of the node dialled, so the best possible decode rate is
    1 / (sum of one-way delays around the chain + compute time of all spans)
with compute time = one decode position through all blocks, timed in the benchmark's own
process before any swarm starts, with the torch threads each node gets (`--threads`, what
LocalSwarm gives a node on this machine). The nodes' announced throughputs are measured while
the other nodes start up beside them, so they run up to 2x pessimistic and make the bound
easy; efficiency against that bound is reported too (`efficiency_announced`).
Efficiency = measured decode tokens/s divided by that bound (the client's own embedding,
LM head and sampling are not in the bound, so they count against efficiency).

Ring decoding (`--ring`, on by default) is measured beside plain decoding: the last server
samples and sends the token to the first, so a token crosses A -> B -> C -> A, three links:
    ring bound = 1 / (one-way delays of A, B, C + compute time of all spans)
(the head and sampling on the last server count against its efficiency). With
`--client-profile P` the client itself sits behind a last mile of profile P (a distant
client; harness.delayed.DelayedSwarm): plain decoding pays it twice per token, ring decoding never.

    python benchmarks/wan.py [--profiles lan,continent] [--wire float32,int8] [--tokens 16] \
        [--client-profile intercontinental] [--no-ring]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from swarmllm.client.generation import GenerationOptions, generate_text  # noqa: E402
from swarmllm.client.swarm_client import SwarmClient  # noqa: E402
from swarmllm.engine.sampling import SamplingParams  # noqa: E402
from swarmllm.harness.local_swarm import LocalSwarm, even_spans  # noqa: E402
from swarmllm.harness.delayed import DelayedSwarm  # noqa: E402
from swarmllm.harness.netem import PROFILES  # noqa: E402
from swarmllm.protocol import Step, encode_frame, encode_tensor  # noqa: E402

MODEL = "smollm2-135m"
PROMPT = "Explain in a few paragraphs how bees build their hives and why the cells are hexagonal."


def measure_compute(threads: int, steps: int = 24) -> float:
    """Seconds for one decode position through all blocks of the model in this process."""
    from swarmllm.runtime import LocalModel

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        local = LocalModel.load(MODEL)
        ids = local.prompt_ids(PROMPT)
        forward = local.new_forward_fn(len(ids) + steps + 1)
        forward(local.head.embed([ids]), 0)
        hidden, times = local.head.embed([ids[-1:]]), []
        for i in range(steps):
            started = time.perf_counter()
            forward(hidden, len(ids) + i)
            times.append(time.perf_counter() - started)
        return statistics.median(times[4:])
    finally:
        torch.set_num_threads(before)


def bench_profile(profile: str, wires: list[str], params: SamplingParams, log_dir: Path,
                  client_profile: str | None = None, ring: bool = True, compute: float = 0.0) -> dict:
    swarm = LocalSwarm(MODEL, even_spans(30, 3), network=profile, log_dir=log_dir)
    swarm.start(timeout=300)
    client_delay = PROFILES[client_profile].one_way_seconds if client_profile else 0.0
    try:
        with SwarmClient.connect(swarm.initial_peers) as client:
            if client_profile:
                client.swarm = DelayedSwarm(client.swarm, client_profile)
            measured = client.ping([n.ready["peer_id"] for n in swarm.nodes], timeout=10)
            rtts = [measured.get(n.ready["peer_id"]) for n in swarm.nodes]
            for ringed in ((False, True) if ring else (False,)):  # warm-up (a ring's first use loads the head)
                generate_text(MODEL, PROMPT, GenerationOptions(SamplingParams(max_new_tokens=2), ring=ringed),
                              client=client)
            throughput = {r.peer_id: r.throughput for r in client.find_servers(MODEL, 30)}
            chain_profiles = [swarm.profiles[n.name] for n in swarm.nodes]  # even spans: chain order = node order
            ring_delays = sum(p.one_way_seconds for p in chain_profiles)
            delays = ring_delays + chain_profiles[-1].one_way_seconds + 2 * client_delay
            announced = sum(1 / throughput[n.ready["peer_id"]] for n in swarm.nodes)
            bound, ring_bound = 1 / (delays + compute), 1 / (ring_delays + compute)
            easy = {False: 1 / (delays + announced), True: 1 / (ring_delays + announced)}
            runs = {}
            for wire in wires:
                for ringed in ((False, True) if ring else (False,)):
                    r = generate_text(MODEL, PROMPT, GenerationOptions(params, wire_dtype=wire, ring=ringed),
                                      client=client)
                    assert (r.decoding == "ring") == ringed, "the servers did not offer ring decoding"
                    runs[wire + (" ring" if ringed else "")] = {
                        "ring": ringed, "decode_tokens_per_second": r.timings.decode_tokens_per_s,
                        "time_to_first_token": r.timings.ttft_s, "token_ids": r.token_ids,
                        "bytes_per_token_per_hop": frame_bytes(wire),
                        "bound_tokens_per_second": ring_bound if ringed else bound,
                        "efficiency": r.timings.decode_tokens_per_s / (ring_bound if ringed else bound),
                        "efficiency_announced": r.timings.decode_tokens_per_s / easy[ringed]}
                if ring:
                    plain, ringed = runs[wire], runs[wire + " ring"]
                    ringed["same_tokens_as_plain"] = ringed["token_ids"] == plain["token_ids"]
                    ringed["gain_vs_plain"] = ringed["decode_tokens_per_second"] / plain["decode_tokens_per_second"]
    finally:
        swarm.stop()
    return {"profile": profile, "node_profiles": [p.name for p in swarm.profiles.values()],
            "client_profile": client_profile, "one_way_delays_seconds": delays, "ring_one_way_delays_seconds": ring_delays, "compute_seconds": compute,
            "announced_compute_seconds": announced, "latency_bound_tokens_per_second": bound,
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
    parser.add_argument("--client-profile", choices=sorted(PROFILES),
                        help="put the client behind this last mile too (a distant client)")
    parser.add_argument("--no-ring", action="store_true", help="skip the ring-decoding runs")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1) // 3),
                        help="torch threads per node (for timing the compute in the bound)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--name", default="wan", help="file name of the results (NAME.json, NAME.md)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logs = Path(tempfile.mkdtemp(prefix="swarmllm-wan-"))
    params = SamplingParams(max_new_tokens=args.tokens)
    compute = measure_compute(args.threads)
    results = {"benchmark": "wan", "model": MODEL, "new_tokens": args.tokens, "cpus": os.cpu_count(),
               "client_profile": args.client_profile, "compute_seconds": compute, "threads_per_node": args.threads,
               "profiles": [bench_profile(p, args.wire.split(","), params, logs / p, args.client_profile,
                                          not args.no_ring, compute) for p in args.profiles.split(",")]}
    (out / f"{args.name}.json").write_text(json.dumps(results, indent=2))
    (out / f"{args.name}.md").write_text(markdown(results))
    print(markdown(results))


def markdown(r: dict) -> str:
    client = f", client behind a {r['client_profile']} last mile" if r.get("client_profile") else ""
    lines = [f"# WAN emulation ({r['model']}, 3 nodes behind netem relays{client}, {r['new_tokens']} new tokens, "
             f"{r['cpus']} CPUs)", "",
             "| profile | median ping RTT (ms) | wire | decoding | bytes/token/hop | decode tokens/s | bound tokens/s "
             "| efficiency | efficiency (announced compute) | ring gain | same tokens | time to first token (ms) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in r["profiles"]:
        for name, run in p["runs"].items():
            wire = name.split()[0]
            gain = f"{run['gain_vs_plain']:.2f}x" if "gain_vs_plain" in run else "-"
            same = {True: "yes", False: "NO"}.get(run.get("same_tokens_as_plain"), "-")
            bound = run.get("bound_tokens_per_second", p["latency_bound_tokens_per_second"])
            lines.append(f"| {p['profile']} | {p['median_ping_rtt_ms']:.1f} | {wire} | "
                         f"{'ring' if run.get('ring') else 'plain'} | {run['bytes_per_token_per_hop']} | "
                         f"{run['decode_tokens_per_second']:.1f} | {bound:.1f} | {run['efficiency']:.2f} | "
                         f"{run.get('efficiency_announced', float('nan')):.2f} | {gain} | "
                         f"{same} | {run['time_to_first_token'] * 1000:.0f} |")
    lines += ["", f"plain bound = 1 / (one-way delays client -> A -> B -> C -> client + compute); compute = "
              f"{r['compute_seconds'] * 1000:.1f} ms, one decode position through all blocks timed in one process with "
              f"{r['threads_per_node']} thread(s) as each node has; ring bound = 1 / (one-way delays A -> B -> C -> A + the same compute); "
              "efficiency = decode tokens/s / its bound; efficiency (announced compute) = the same with the compute "
              "the nodes announced (measured while the others started: easier); ring gain = ring tokens/s / plain "
              "tokens/s. With a lossy wire (int8) ring and plain tokens may differ: the ring skips the two lossy "
              "crossings through the client."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
