"""Batching benchmark: aggregate decode tokens/s of 1, 2, 4, 8 concurrent sessions, batching on and off.

One local swarm on smollm2-135m holds two 3-node chains over the same blocks ([0,10),
[10,20), [20,30)): one runs with batching (`--max-batch 16`), the other without
(`--max-batch 1`). Each session is pinned to one chain, and the two settings are measured
alternately at every level, so both see the same machine, the same swarm and the same
background load. Sessions are independent coroutines on one client (greedy decoding, EOS
ignored so every session decodes the same number of tokens); the client's own work (LM head
and embeddings) is batched over the sessions that wait for it, the way a gateway would do it,
and its CPU time is reported because on a small machine it competes with the nodes.

Reports, per level and setting: aggregate decode tokens/s (all sessions' decode tokens over
the wall time of the decode phase, prefill excluded), the speed-up over one session, and
whether every session produced the same tokens with and without batching. A lone session
runs the same way on both chains, so the target (8 sessions >= 3x one) is checked against
the better of the two single-session figures. The machine's load average is recorded: on a
shared machine it moves every figure. Writes JSON and a markdown table.

    python benchmarks/batching.py [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

from swarmllm.client.generation import ClientModel
from swarmllm.client.swarm_client import SwarmClient
from swarmllm.harness.local_swarm import LocalSwarm, even_spans

MODEL = "smollm2-135m"
PROMPTS = ["Tell me about the ocean.", "Write a haiku about autumn.", "Explain what a CPU does.",
           "Give me three tips for learning to cook.", "Why is the sky blue?", "Describe a busy market.",
           "What is a prime number?", "Name three rivers in Europe."]
SETTINGS = {"batching": ["--max-batch", "16"], "no batching": ["--max-batch", "1"]}


class BatchedHead:
    """The client's LM head, run once for all the sessions waiting for it (continuous batching)."""

    def __init__(self, model: ClientModel):
        self.model = model
        self._waiting: list[tuple[torch.Tensor, asyncio.Future]] = []
        self._worker: asyncio.Task | None = None
        self.seconds = 0.0  # client CPU time in the head

    async def next_token(self, last_hidden: torch.Tensor) -> int:
        """Greedy token after hidden [D] (the last position of a step's output)."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((last_hidden, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work())
        return await future

    async def _work(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            # One sequence of one row per session: the head computes each alike whatever its batch-mates.
            rows = torch.stack([h for h, _ in batch])[:, None]  # [N, 1, D]
            started = time.perf_counter()
            tokens = await asyncio.to_thread(lambda: self.model.head.logits(rows)[:, 0].argmax(-1).tolist())
            self.seconds += time.perf_counter() - started
            for (_, future), token in zip(batch, tokens):
                future.set_result(token)


async def run_sessions(sessions, model: ClientModel, prompts: list[list[int]], new_tokens: int) -> dict:
    """Prefill every session, then decode `new_tokens` each, all at once; time the decode phase."""
    head = BatchedHead(model)
    prefilled = asyncio.Barrier(len(sessions) + 1)
    tokens: list[list[int]] = [[] for _ in sessions]

    async def one(index: int, session) -> None:
        ids = prompts[index]
        out = await session.step(model.head.embed([ids]), 0)
        tokens[index].append(await head.next_token(out[0, -1]))
        await prefilled.wait()
        for t in range(new_tokens):
            out = await session.step(model.head.embed([[tokens[index][-1]]]), len(ids) + t)
            tokens[index].append(await head.next_token(out[0, -1]))

    tasks = [asyncio.create_task(one(i, s)) for i, s in enumerate(sessions)]
    await prefilled.wait()
    started, head_before = time.perf_counter(), head.seconds
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - started
    return {"wall_seconds": wall, "decode_tokens": len(sessions) * new_tokens,
            "aggregate_tokens_per_second": len(sessions) * new_tokens / wall,
            "client_head_seconds": head.seconds - head_before, "tokens": tokens}


def measure(client: SwarmClient, chain, model: ClientModel, n_sessions: int, new_tokens: int) -> dict:
    prompts = [model.prompt_ids(PROMPTS[i % len(PROMPTS)]) for i in range(n_sessions)]
    remotes = [client.open_session(model.source.model_id, model.config.n_blocks, len(p) + new_tokens + 1, chain=chain)
               for p in prompts]
    try:
        return client.loop.run(run_sessions([r.session for r in remotes], model, prompts, new_tokens))
    finally:
        for remote in remotes:
            remote.close()


def start_swarm(log_dir: Path) -> tuple[LocalSwarm, dict]:
    """One bootstrap, and one 3-node chain per setting (every node on one torch thread)."""
    swarm = LocalSwarm(MODEL, [], log_dir=log_dir, env={"SWARMLLM_LOG_LEVEL": "INFO"})
    swarm.start(timeout=300)
    nodes = {name: [swarm.add_node(a, b, name=f"{name.replace(' ', '-')}{i}", extra_args=[*flags, "--num-threads", "1"])
                    for i, (a, b) in enumerate(even_spans(30, 3))] for name, flags in SETTINGS.items()}
    swarm.wait_ready([n for group in nodes.values() for n in group], timeout=300)
    return swarm, nodes


def chain_of(client: SwarmClient, group) -> list:
    peers = {n.ready["peer_id"] for n in group}
    for _ in range(50):  # the DHT needs a moment to show every record
        records = [r for r in client.find_servers(MODEL, 30) if r.peer_id in peers]
        if len(records) == len(peers):
            break
        time.sleep(0.2)
    others = {r.peer_id for r in client.find_servers(MODEL, 30)} - peers
    chain = client.plan(MODEL, 30, exclude=others)
    assert {link.peer_id for link in chain} == peers, "the chain must use exactly this setting's nodes"
    return chain


def batch_counts(group) -> list[dict]:
    """Steps and batches each node logged when it stopped."""
    counts = []
    for node in group:
        match = re.search(r"ran (\d+) steps in (\d+) batches", node.log_path.read_text(errors="replace"))
        steps, batches = (int(match[1]), int(match[2])) if match else (0, 0)
        counts.append({"node": node.name, "steps": steps, "batches": batches,
                       "mean_batch": steps / batches if batches else None})
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny setting for CI")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # the client shares the cores with the nodes
    levels, new_tokens, repeats = ((1, 2), 8, 1) if args.quick else ((1, 2, 4, 8), 48, 3)

    load_before = os.getloadavg()
    model = ClientModel.load(MODEL)
    swarm, nodes = start_swarm(Path(tempfile.mkdtemp(prefix="swarmllm-batching-")))
    runs: dict[str, dict[int, list[dict]]] = {name: {n: [] for n in levels} for name in SETTINGS}
    try:
        with SwarmClient.connect(swarm.initial_peers) as client:
            chains = {name: chain_of(client, group) for name, group in nodes.items()}
            for name in SETTINGS:  # warm-up
                measure(client, chains[name], model, 2, 4)
            for _ in range(repeats):
                for n in levels:
                    for name in SETTINGS:  # alternate, so both settings see the same background load
                        runs[name][n].append(measure(client, chains[name], model, n, new_tokens))
    finally:
        swarm.stop()
    report = summarize(runs, levels, new_tokens, repeats, args.quick)
    report["machine"]["load_average_1min_before_after"] = [load_before[0], os.getloadavg()[0]]
    report["nodes"] = {name: batch_counts(group) for name, group in nodes.items()}
    (out / "batching.json").write_text(json.dumps(report, indent=2))
    table = markdown(report)
    (out / "batching.md").write_text(table)
    print(table)
    sys.exit(0 if report["same_tokens_with_and_without_batching"] else 1)


def summarize(runs: dict, levels, new_tokens: int, repeats: int, quick: bool) -> dict:
    def median_run(rs: list[dict]) -> dict:
        return sorted(rs, key=lambda r: r["aggregate_tokens_per_second"])[len(rs) // 2]

    table = {}
    for name in SETTINGS:
        rows = []
        for n in levels:
            r = median_run(runs[name][n])
            rows.append({"sessions": n, "aggregate_tokens_per_second": r["aggregate_tokens_per_second"],
                         "all_runs_tokens_per_second": [x["aggregate_tokens_per_second"] for x in runs[name][n]],
                         "wall_seconds": r["wall_seconds"], "client_head_seconds": r["client_head_seconds"]})
        base = rows[0]["aggregate_tokens_per_second"]
        for row in rows:
            row["speedup_vs_one_session"] = row["aggregate_tokens_per_second"] / base
        table[name] = rows
    single = max(table[name][0]["aggregate_tokens_per_second"] for name in SETTINGS)
    top_on = table["batching"][-1]["aggregate_tokens_per_second"]
    same = all(a["tokens"] == b["tokens"] for n in levels
               for a, b in zip(runs["batching"][n], runs["no batching"][n]))
    top = max(levels)
    return {
        "benchmark": "batching", "model": MODEL, "quick": quick, "new_tokens_per_session": new_tokens,
        "repeats": repeats, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                        "torch": torch.__version__},
        "settings": table, "same_tokens_with_and_without_batching": same,
        "target": {"sessions": 8, "speedup_vs_one_session": ">= 3"},
        "speedup_at_top_level_vs_best_single_session": top_on / single,
        "target_met": top == 8 and top_on / single >= 3,
        "batching_vs_no_batching_at_top_level": table["batching"][-1]["aggregate_tokens_per_second"]
        / table["no batching"][-1]["aggregate_tokens_per_second"],
    }


def markdown(r: dict) -> str:
    lines = [f"# Batching benchmark ({r['model']}, 3-node chain on loopback, {r['machine']['cpus']} CPUs, "
             f"{r['new_tokens_per_session']} greedy decode tokens per session, median of {r['repeats']})", "",
             "| sessions | batching: tokens/s | speed-up | no batching: tokens/s | speed-up | "
             "client head s (on / off) |", "|---|---|---|---|---|---|"]
    for on, off in zip(r["settings"]["batching"], r["settings"]["no batching"]):
        lines.append(f"| {on['sessions']} | {on['aggregate_tokens_per_second']:.1f} | {on['speedup_vs_one_session']:.2f}x "
                     f"| {off['aggregate_tokens_per_second']:.1f} | {off['speedup_vs_one_session']:.2f}x | "
                     f"{on['client_head_seconds']:.2f} / {off['client_head_seconds']:.2f} |")
    mean_batches = ", ".join(f"{c['node']} {c['mean_batch']:.2f}" for c in r.get("nodes", {}).get("batching", [])
                             if c["mean_batch"])
    load = r["machine"].get("load_average_1min_before_after")
    lines += ["", f"- target: 8 sessions >= 3x one session with batching: "
                  f"{r['speedup_at_top_level_vs_best_single_session']:.2f}x over the better single-session figure, "
                  f"**{'met' if r['target_met'] else 'not met'}**",
              f"- batching / no batching at the top level: {r['batching_vs_no_batching_at_top_level']:.2f}x",
              f"- same greedy tokens with and without batching, every session: "
              f"{'yes' if r['same_tokens_with_and_without_batching'] else 'NO'}",
              f"- mean steps per batch over the whole run (batching nodes): {mean_batches or 'n/a'}",
              f"- load average (1 min) before / after: {load[0]:.1f} / {load[1]:.1f}" if load else ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
