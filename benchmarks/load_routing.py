"""Load-aware routing benchmark: 16 concurrent streaming sessions over one chain vs two parallel chains.

Swarm: two full-model nodes of smollm2-135m ([0, 30) each, one torch thread each): two parallel
one-hop chains. One hop per chain keeps the comparison about where sessions go, not about hop
latency, and two processes are what a 2-core machine can run side by side (four half-model nodes
would add hops and processes competing for the same cores). In one run on the same swarm, each
phase with a fresh client that first measured both chains alike (2 sessions x 4 tokens on each):
- "one chain": every session pinned to node A (the baseline a single chain gives);
- "speed only": both chains, routing by measured speed alone (`SwarmClient.load_aware = False`;
  the per-session tie-break still applies);
- "load aware": both chains, routing counting load (client/load.py).
Each phase starts `--clients` sessions at once; each streams `--tokens` greedy tokens (EOS ignored),
decoding once every session has its first token (on a 2-core machine a node interleaving a
prefill with 15 sessions' decode steps stalls them past the client's step timeout).
The client's LM head is batched over the sessions waiting for it (batching.py's BatchedHead).
Reports aggregate decode tokens/s (all tokens / wall time from the first open to the last token),
time-to-first-token p50/p95 (session start -> first token, opening and prefill included) and how
many sessions each node got. Targets (issue 14, item 5): load aware >= 1.7x one chain, and a lower
TTFT p95 than speed only. The load average is recorded: on a shared machine it moves every figure.
Also recorded: the cores each node (with its p2pd) and the client side used per phase, and the
machine's ceiling for any two parallel chains on it: two single-threaded decoders in separate
processes, with no network at all, against one alone (on this repo's 2-vCPU EPYC VM: 1.73x).

    python benchmarks/load_routing.py [--clients 16] [--tokens 32] [--threads 1] [--client-quant none|int8]
                                      [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).parent))
from batching import PROMPTS, BatchedHead  # noqa: E402  (a sibling script, not a package)

from swarmllm.client.generation import ClientModel  # noqa: E402
from swarmllm.client.swarm_client import SwarmClient  # noqa: E402
from swarmllm.harness.local_swarm import LocalSwarm  # noqa: E402
from swarmllm.protocol import SwarmError  # noqa: E402

MODEL = "smollm2-135m"


def family(pid: int) -> set[int]:
    """A process and its descendants (a node and its p2pd)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(pid)
        return {root.pid, *(c.pid for c in root.children(recursive=True))}
    return set()


def cpu_seconds(nodes: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each node with its p2pd, and by the rest of this process
    tree ("client": this process's sessions and LM head, its p2pd, the bootstrap peer)."""
    groups = {name: family(pid) for name, pid in nodes.items()}
    groups["client"] = family(os.getpid()) - set().union(*groups.values())
    used = {}
    for name, members in groups.items():
        used[name] = 0.0
        for pid in members:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = psutil.Process(pid).cpu_times()
                used[name] += times.user + times.system
    return used


def measured(nodes: dict[str, int], run):
    """Runs `run()` and adds to its result how many cores each process group used meanwhile."""
    before, started = cpu_seconds(nodes), time.perf_counter()
    result = run()
    after, wall = cpu_seconds(nodes), time.perf_counter() - started
    result["cores_used"] = {name: round((after[name] - before.get(name, 0.0)) / wall, 2) for name in after}
    return result


def decode_probe(tokens: int = 96) -> None:
    """One process's greedy decode speed with one torch thread, no network: prints tokens/s."""
    from swarmllm.client.generation import GenerationOptions, Generator
    from swarmllm.engine.sampling import SamplingParams
    torch.set_num_threads(1)
    generator = Generator.local(MODEL)
    ids = generator.model.prompt_ids(PROMPTS[0])
    generator.generate(ids, GenerationOptions(SamplingParams(max_new_tokens=8)))  # warm-up
    started = time.perf_counter()
    result = generator.generate(ids, GenerationOptions(SamplingParams(max_new_tokens=tokens)))
    print(result.generated_tokens / (time.perf_counter() - started))


def machine_ceiling() -> dict:
    """What two single-threaded decoders in separate processes get together on this machine, against one
    alone: the most any two parallel chains on it can get (shared memory bandwidth, caches, the cores)."""
    def probes(n: int) -> list[float]:
        procs = [subprocess.Popen([sys.executable, __file__, "--decode-probe"], stdout=subprocess.PIPE, text=True)
                 for _ in range(n)]
        return [float(proc.communicate()[0].split()[-1]) for proc in procs]
    rounds = 3  # alternating, the median of each: one probe swings by 20% on a VM
    alone, together = [], []
    for _ in range(rounds):
        alone += probes(1)
        together.append(probes(2))
    one = sorted(alone)[rounds // 2]
    both = sorted(together, key=sum)[rounds // 2]
    return {"one_process_tokens_per_second": one, "two_processes_tokens_per_second": both,
            "rounds": rounds, "ceiling": sum(both) / one}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


async def phase(client: SwarmClient, model: ClientModel, clients: int, tokens: int, chain=None) -> dict:
    """`clients` sessions started at once, each streaming `tokens` tokens; runs on the client's loop."""
    head = BatchedHead(model)
    prefilled = asyncio.Barrier(clients)
    started = time.perf_counter()

    async def one(index: int) -> dict:
        ids = model.prompt_ids(PROMPTS[index % len(PROMPTS)])
        remote = await asyncio.to_thread(client.open_session, MODEL, model.config.n_blocks, len(ids) + tokens + 1,
                                         chain=chain)
        session, first, done = remote.session, None, 0
        try:
            out = await session.step(model.head.embed([ids]), 0)
            token = await head.next_token(out[0, -1])
            first, done = time.perf_counter() - started, 1
            # Decoding starts once every session has its first token: a single-threaded node running one
            # session's long prefill between others' decode steps stalls those past their step timeout.
            with contextlib.suppress(asyncio.BrokenBarrierError):  # broken: a session failed before its first token
                await prefilled.wait()
            for t in range(tokens - 1):
                out = await session.step(model.head.embed([[token]]), len(ids) + t)
                token = await head.next_token(out[0, -1])
                done += 1
            return {"ttft": first, "peer": session.chain[0].peer_id, "tokens": done, "error": None}
        except SwarmError as e:  # a step timed out on the contended machine: counted, not fatal
            if first is None:
                await prefilled.abort()  # nobody waits for a session that never prefilled
            return {"ttft": first, "peer": session.chain[0].peer_id, "tokens": done, "error": str(e)[:200]}
        finally:
            await session.close()

    results = await asyncio.gather(*(one(i) for i in range(clients)))
    wall = time.perf_counter() - started
    ttfts = [r["ttft"] for r in results if r["ttft"] is not None]
    failed = [r["error"] for r in results if r["error"]]
    print(f"phase done: {len(results) - len(failed)}/{clients} sessions completed", file=sys.stderr)
    return {"clients": clients, "tokens_each": tokens, "wall_seconds": wall, "completed": clients - len(failed),
            "failures": failed[:3], "aggregate_tokens_per_second": sum(r["tokens"] for r in results) / wall,
            "ttft_p50": percentile(ttfts, 0.5), "ttft_p95": percentile(ttfts, 0.95),
            "sessions_per_node": dict(Counter(r["peer"][-8:] for r in results))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16, help="concurrent streaming sessions per phase")
    parser.add_argument("--tokens", type=int, default=32, help="tokens each session streams")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per node")
    parser.add_argument("--client-quant", default="none", choices=["none", "int8"],
                        help="the client's LM head (int8: a quarter of the bytes read per token)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--decode-probe", action="store_true", help=argparse.SUPPRESS)  # machine_ceiling's child
    args = parser.parse_args()
    if args.decode_probe:
        return decode_probe()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # the client shares the cores with the nodes
    load_before = os.getloadavg()
    ceiling = machine_ceiling()  # before the swarm starts, on the idle machine
    model = ClientModel.load(MODEL, quant=args.client_quant)
    swarm = LocalSwarm(MODEL, [], log_dir=Path(tempfile.mkdtemp(prefix="swarmllm-load-routing-")))
    swarm.start(timeout=300)
    try:
        nodes = [swarm.add_node(0, 30, name=f"full{i}", extra_args=["--num-threads", str(args.threads)])
                 for i in range(2)]
        swarm.wait_ready(nodes, timeout=300)
        peers = [n.ready["peer_id"] for n in nodes]

        def measured_client(load_aware: bool) -> SwarmClient:
            """A fresh client that has measured both chains alike (the same warm-up on each), so that each
            routing policy starts from the same knowledge: step times measured while one node carried all
            16 sessions of an earlier phase would otherwise make it look slow to the next phase's routing."""
            client = SwarmClient.connect(swarm.initial_peers, keep_state=False)
            for _ in range(60):  # the DHT needs a moment to show both records
                if len(client.find_servers(MODEL, 30)) == 2:
                    break
                time.sleep(0.5)
            for peer in peers:
                alone = client.plan(MODEL, 30, exclude=[p for p in peers if p != peer])
                client.loop.run(phase(client, model, 2, 4, chain=alone))
            client.load_aware = load_aware
            return client

        pids = {f"node {p[-8:]}": n.process.pid for p, n in zip(peers, nodes)}
        phases = {}
        with measured_client(True) as client:
            alone = client.plan(MODEL, 30, exclude=[peers[1]])
            phases["one chain"] = measured(pids, lambda: client.loop.run(
                phase(client, model, args.clients, args.tokens, chain=alone)))
        with measured_client(False) as client:
            phases["speed only"] = measured(pids, lambda: client.loop.run(
                phase(client, model, args.clients, args.tokens)))
        with measured_client(True) as client:
            phases["load aware"] = measured(pids, lambda: client.loop.run(
                phase(client, model, args.clients, args.tokens)))
    finally:
        swarm.stop()
    one, speed, load = phases["one chain"], phases["speed only"], phases["load aware"]
    report = {"benchmark": "load_routing", "model": MODEL, "nodes": "2 x [0, 30)", "cpus": os.cpu_count(),
              "threads_per_node": args.threads, "client_head_quant": args.client_quant, "load_average_before": load_before,
              "load_average_after": os.getloadavg(), "machine_ceiling": ceiling, "phases": phases,
              "load_aware_speedup_over_one_chain": load["aggregate_tokens_per_second"] / one["aggregate_tokens_per_second"],
              "speed_only_speedup_over_one_chain": speed["aggregate_tokens_per_second"] / one["aggregate_tokens_per_second"],
              "ttft_p95_load_aware_below_speed_only": load["ttft_p95"] < speed["ttft_p95"]}
    (out / "load_routing.json").write_text(json.dumps(report, indent=2))
    table = markdown(report)
    (out / "load_routing.md").write_text(table)
    print(table)


def markdown(r: dict) -> str:
    lines = [f"# Load-aware routing ({r['model']}, {r['nodes']} on loopback, {r['cpus']} CPUs, "
             f"{r['threads_per_node']} thread(s) per node; load average {r['load_average_before'][0]:.1f} before)", "",
             "| phase | sessions completed | tokens each | aggregate tokens/s | TTFT p50 / p95 (ms) | sessions per node | cores used |",
             "|---|---|---|---|---|---|---|"]
    for name, x in r["phases"].items():
        split = ", ".join(f"{peer}: {n}" for peer, n in sorted(x["sessions_per_node"].items()))
        cores = ", ".join(f"{who} {n:.2f}" for who, n in x.get("cores_used", {}).items())
        lines.append(f"| {name} | {x['completed']}/{x['clients']} | {x['tokens_each']} | {x['aggregate_tokens_per_second']:.1f} | "
                     f"{x['ttft_p50'] * 1000:.0f} / {x['ttft_p95'] * 1000:.0f} | {split} | {cores} |")
    lines += ["", f"Load aware / one chain: {r['load_aware_speedup_over_one_chain']:.2f}x (target 1.7x); "
              f"speed only / one chain: {r['speed_only_speedup_over_one_chain']:.2f}x; TTFT p95 load aware below "
              f"speed only: {r['ttft_p95_load_aware_below_speed_only']}."]
    c = r.get("machine_ceiling")
    if c:
        lines += ["", f"This machine's ceiling: two single-threaded decoders in separate processes, no network, get "
                  f"{c['ceiling']:.2f}x one alone ({' + '.join(f'{x:.1f}' for x in c['two_processes_tokens_per_second'])} "
                  f"vs {c['one_process_tokens_per_second']:.1f} tokens/s); the swarm's clients, LM head and p2pd daemons "
                  "need cores too (\"cores used\" above)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
