"""Benchmark: the whole model in one process vs a chain of nodes on loopback.

Measures, for smollm2-135m (greedy, chat prompt):
- decode tokens/s and time-to-first-token: our engine in-process, transformers' `generate`
  on the same GGUF weights and dtype, a 1-node swarm and a 3-node chain;
- per-hop overhead: (3-node per-token time - in-process per-token time) / 3 nodes, and
  (3-node - 1-node) / 2 extra hops;
- bytes per token per hop (one decode step's frame, header included);
- node start-up time (process spawn -> ready, and weight loading alone) and peak RSS of a
  node with 10 blocks vs one with all 30.
Writes JSON and a markdown table. `--quick` runs a tiny setting for CI.

    python benchmarks/pipeline.py [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from swarmllm.client.generation import GenerationOptions, generate_text  # noqa: E402
from swarmllm.client.swarm_client import SwarmClient  # noqa: E402
from swarmllm.engine.dtypes import dtype_name, resolve_dtype  # noqa: E402
from swarmllm.engine.sampling import SamplingParams  # noqa: E402
from swarmllm.harness.local_swarm import LocalSwarm, even_spans  # noqa: E402
from swarmllm.protocol import Step, encode_frame, encode_tensor  # noqa: E402

MODEL = "smollm2-135m"
PROMPT = "Explain in a few paragraphs how bees build their hives and why the cells are hexagonal."


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def import_baseline_rss_mb() -> float:
    """Peak RSS of a process that only imports what a node imports (Python, torch, hivemind)."""
    import subprocess
    code = ("import swarmllm.server.node, swarmllm.server.backend; "
            "print([l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1])")
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout) / 1024


def best_of(runs: list) -> dict:
    """The run with the median decode speed (runs vary with the shared 2-core machine), as a row."""
    median = sorted(runs, key=lambda r: r.timings.decode_tokens_per_s)[len(runs) // 2]
    return {"decode_tokens_per_second": median.timings.decode_tokens_per_s,
            "time_to_first_token": median.timings.ttft_s, "generated_tokens": median.generated_tokens}


def run_ours_local(params: SamplingParams, repeats: int) -> dict:
    generate_text(MODEL, PROMPT, SamplingParams(max_new_tokens=4))  # warm-up
    return best_of([generate_text(MODEL, PROMPT, params) for _ in range(repeats)])


def run_transformers(params: SamplingParams, repeats: int, dtype: torch.dtype) -> dict:
    """transformers' generate on the same GGUF weights (its own dequantizer) and dtype."""
    sys.path.insert(0, str(Path(__file__).parent))
    from engine_vs_transformers import load_transformers, time_transformers

    from swarmllm.client.generation import ClientModel

    local = ClientModel.load(MODEL, dtype_name(dtype))
    prompt_ids = local.prompt_ids(PROMPT)
    best = time_transformers(load_transformers(local.source.path, dtype), prompt_ids, params.max_new_tokens, repeats)
    return {"decode_tokens_per_second": best["decode_tokens_per_s"], "time_to_first_token": best["ttft_s"],
            "generated_tokens": len(best["token_ids"])}


def run_swarm(spans, params: SamplingParams, repeats: int, log_dir: Path) -> tuple[dict, list[dict]]:
    swarm = LocalSwarm(MODEL, spans, log_dir=log_dir)
    spawned = time.perf_counter()
    swarm.start(timeout=300)
    ready_wall = time.perf_counter() - spawned
    try:
        with SwarmClient.connect(swarm.initial_peers) as client:
            generate_text(MODEL, PROMPT, SamplingParams(max_new_tokens=4), client=client)  # warm-up
            result = best_of([generate_text(MODEL, PROMPT, GenerationOptions(params, ring=False), client=client)
                              for _ in range(repeats)])
        nodes = [{"blocks": [n.ready["start"], n.ready["end"]], "startup_seconds": n.ready["startup_seconds"],
                  "load_seconds": n.ready["load_seconds"], "announced_tokens_per_second": n.ready["throughput"],
                  "peak_rss_mb": peak_rss_mb(n.process.pid), "spawn_to_ready_seconds_all_nodes": ready_wall}
                 for n in swarm.nodes]
    finally:
        swarm.stop()
    return result, nodes


def frame_bytes_per_token(hidden_size: int, wire_dtype: str) -> int:
    meta, raw = encode_tensor(torch.zeros(1, 1, hidden_size), wire_dtype)
    return len(encode_frame(Step(session_id="0" * 32, step_id=123, start_position=456, tensor=meta), raw)) + 8


def summarize(r: dict) -> dict:
    return {k: r[k] for k in ("decode_tokens_per_second", "time_to_first_token", "generated_tokens") if k in r}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny setting for CI: few tokens, one repeat")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--no-transformers", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    params = SamplingParams(max_new_tokens=8 if args.quick else 64)
    repeats = 1 if args.quick else 3

    ours = run_ours_local(params, repeats)
    dtype = resolve_dtype("auto")
    hf = None if args.no_transformers else run_transformers(params, repeats, dtype)
    logs = Path(tempfile.mkdtemp(prefix="swarmllm-bench-"))
    one, one_nodes = run_swarm([(0, 30)], params, repeats, logs / "1node")
    three, three_nodes = run_swarm(even_spans(30, 3), params, repeats, logs / "3node")

    wire_dtype = dtype_name(dtype) if dtype != torch.float32 else "float32"  # lossless for the chain
    baseline = import_baseline_rss_mb()
    per_token = {name: 1 / r["decode_tokens_per_second"] for name, r in (("local", ours), ("one", one), ("three", three))}
    results = {
        "benchmark": "pipeline", "model": MODEL, "dtype": dtype_name(dtype), "quick": args.quick, "new_tokens": params.max_new_tokens,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads()},
        "single_process_ours": summarize(ours),
        "single_process_transformers": summarize(hf) if hf else None,
        "swarm_1_node": summarize(one),
        "swarm_3_nodes": summarize(three),
        "ratios": {
            "ours_vs_transformers": ours["decode_tokens_per_second"] / hf["decode_tokens_per_second"] if hf else None,
            "three_nodes_vs_single_process": three["decode_tokens_per_second"] / ours["decode_tokens_per_second"],
        },
        "per_hop_overhead_ms": {
            "three_nodes_vs_in_process_per_node": (per_token["three"] - per_token["local"]) / 3 * 1000,
            "three_vs_one_node_per_extra_hop": (per_token["three"] - per_token["one"]) / 2 * 1000,
        },
        "wire_dtype": wire_dtype,
        "bytes_per_token_per_hop": frame_bytes_per_token(576, wire_dtype),
        "nodes_1": one_nodes,
        "nodes_3": three_nodes,
        "rss_ratio_10_of_30_blocks_vs_full": three_nodes[0]["peak_rss_mb"] / one_nodes[0]["peak_rss_mb"],
        "import_baseline_rss_mb": baseline,
        "rss_ratio_above_import_baseline": (three_nodes[0]["peak_rss_mb"] - baseline) / (one_nodes[0]["peak_rss_mb"] - baseline),
        "targets": {"ours_vs_transformers": ">= 1.5", "three_nodes_vs_single_process": ">= 0.85",
                    "per_hop_overhead_ms": "<= 2", "rss_ratio_10_of_30_blocks_vs_full": "well under 0.5"},
    }
    (out / "pipeline.json").write_text(json.dumps(results, indent=2))
    (out / "pipeline.md").write_text(markdown(results))
    print(markdown(results))


def markdown(r: dict) -> str:
    def row(name, x):
        if not x:
            return f"| {name} | n/a | n/a |"
        return f"| {name} | {x['decode_tokens_per_second']:.1f} | {x['time_to_first_token'] * 1000:.0f} |"

    lines = [f"# Pipeline benchmark ({r['model']}, {r['dtype']}, {r['new_tokens']} new tokens, {r['machine']['cpus']} CPUs"
             f"{', quick' if r['quick'] else ''})", "",
             "| setting | decode tokens/s | time to first token (ms) |", "|---|---|---|",
             row("our engine, one process", r["single_process_ours"]),
             row("transformers generate, one process", r["single_process_transformers"]),
             row("swarm, 1 node [0,30)", r["swarm_1_node"]),
             row("swarm, 3 nodes", r["swarm_3_nodes"]), "",
             "| measure | value | target |", "|---|---|---|"]
    ratio = r["ratios"]["ours_vs_transformers"]
    lines += [
        f"| our engine / transformers | {ratio:.2f}x | >= 1.5x |" if ratio else "| our engine / transformers | n/a | >= 1.5x |",
        f"| 3-node / single process | {r['ratios']['three_nodes_vs_single_process']:.2f}x | >= 0.85x |",
        f"| per-hop overhead (3 nodes vs in-process, per node) | "
        f"{r['per_hop_overhead_ms']['three_nodes_vs_in_process_per_node']:.2f} ms | <= 2 ms |",
        f"| per-hop overhead (3 nodes vs 1 node, per extra hop) | "
        f"{r['per_hop_overhead_ms']['three_vs_one_node_per_extra_hop']:.2f} ms | <= 2 ms |",
        f"| bytes per token per hop ({r['wire_dtype']} on the wire) | {r['bytes_per_token_per_hop']} | |",
        f"| node start-up, spawn to ready (3 nodes started together) | "
        f"{r['nodes_3'][0]['spawn_to_ready_seconds_all_nodes']:.1f} s | a few s |",
        f"| weight loading, 10 blocks / 30 blocks | {r['nodes_3'][0]['load_seconds']:.2f} s / "
        f"{r['nodes_1'][0]['load_seconds']:.2f} s | |",
        f"| peak RSS, node with 10 blocks / all 30 | {r['nodes_3'][0]['peak_rss_mb']:.0f} MB / "
        f"{r['nodes_1'][0]['peak_rss_mb']:.0f} MB ({r['rss_ratio_10_of_30_blocks_vs_full']:.2f}x) | well under 0.5x |",
        f"| peak RSS above the {r['import_baseline_rss_mb']:.0f} MB of imports (python, torch, hivemind) | "
        f"{r['rss_ratio_above_import_baseline']:.2f}x | |",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
