"""Load benchmark: concurrent streaming clients through the gateway of a 3-node swarm.

For 1, 4 and 16 concurrent clients (each sends `--requests` streaming chat requests in a
row), report: requests completed, aggregate output tokens/s, time-to-first-token and
inter-token latency p50/p95. Every request must complete. Writes JSON and a markdown table.

    python benchmarks/load.py [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from swarmllm.harness.local_swarm import LocalSwarm, even_spans, free_port

MODEL = "smollm2-135m"
PROMPTS = ["Tell me about the ocean.", "Write a haiku about autumn.", "Explain what a CPU does.",
           "Give me three tips for learning to cook.", "Why is the sky blue?", "Describe a busy market."]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def one_request(client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int) -> dict:
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0.7, "seed": 1, "stream": True}
    started = time.perf_counter()
    stamps: list[float] = []
    tokens = 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            return {"ok": False, "status": response.status_code, "error": (await response.aread()).decode()[:300]}
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return {"ok": False, "status": 200, "error": chunk["error"]["message"]}
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                stamps.append(time.perf_counter())
            if "swarmllm" in chunk:
                tokens = chunk["swarmllm"]["completion_tokens"]
    return {"ok": True, "tokens": tokens, "ttft": stamps[0] - started if stamps else float("nan"),
            "inter_token": [b - a for a, b in zip(stamps, stamps[1:])], "seconds": time.perf_counter() - started}


async def run_level(url: str, concurrency: int, requests_each: int, max_tokens: int) -> dict:
    async with httpx.AsyncClient(timeout=600) as client:
        async def worker(index: int) -> list[dict]:
            return [await one_request(client, url, PROMPTS[(index + i) % len(PROMPTS)], max_tokens)
                    for i in range(requests_each)]
        started = time.perf_counter()
        results = [r for batch in await asyncio.gather(*(worker(i) for i in range(concurrency))) for r in batch]
        wall = time.perf_counter() - started
    ok = [r for r in results if r["ok"]]
    inter = [x for r in ok for x in r["inter_token"]]
    return {
        "concurrency": concurrency, "requests": len(results), "completed": len(ok),
        "failures": [r for r in results if not r["ok"]][:5],
        "aggregate_tokens_per_second": sum(r["tokens"] for r in ok) / wall, "wall_seconds": wall,
        "ttft_p50": percentile([r["ttft"] for r in ok], 0.5), "ttft_p95": percentile([r["ttft"] for r in ok], 0.95),
        "inter_token_p50": percentile(inter, 0.5), "inter_token_p95": percentile(inter, 0.95),
        "mean_tokens_per_request": statistics.mean(r["tokens"] for r in ok) if ok else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny setting for CI")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    levels = (1, 4) if args.quick else (1, 4, 16)
    requests_each, max_tokens = (1, 8) if args.quick else (2, 48)

    swarm = LocalSwarm(MODEL, even_spans(30, 3), log_dir=Path(tempfile.mkdtemp(prefix="swarmllm-load-")))
    swarm.start(timeout=300)
    try:
        port = free_port()
        gateway = swarm.add_gateway(port, ["--max-active", "16", "--max-queue", "64",
                                           "--requests-per-minute", "100000", "--tokens-per-minute", "100000000"])
        swarm.wait_ready([gateway])
        url = f"http://127.0.0.1:{port}"
        asyncio.run(run_level(url, 1, 1, 4))  # warm-up
        results = [asyncio.run(run_level(url, c, requests_each, max_tokens)) for c in levels]
    finally:
        swarm.stop()
    report = {"benchmark": "load", "model": MODEL, "nodes": 3, "cpus": os.cpu_count(), "quick": args.quick,
              "requests_per_client": requests_each, "max_tokens": max_tokens, "levels": results,
              "all_completed": all(r["completed"] == r["requests"] for r in results)}
    (out / "load.json").write_text(json.dumps(report, indent=2))
    table = markdown(report)
    (out / "load.md").write_text(table)
    print(table)
    sys.exit(0 if report["all_completed"] else 1)


def markdown(r: dict) -> str:
    lines = [f"# Load benchmark ({r['model']}, 3-node swarm on loopback, {r['cpus']} CPUs, "
             f"{r['requests_per_client']} streaming requests per client, max_tokens {r['max_tokens']})", "",
             "| clients | completed | aggregate tokens/s | TTFT p50 / p95 (ms) | inter-token p50 / p95 (ms) |",
             "|---|---|---|---|---|"]
    for x in r["levels"]:
        lines.append(f"| {x['concurrency']} | {x['completed']}/{x['requests']} | {x['aggregate_tokens_per_second']:.1f} | "
                     f"{x['ttft_p50'] * 1000:.0f} / {x['ttft_p95'] * 1000:.0f} | "
                     f"{x['inter_token_p50'] * 1000:.1f} / {x['inter_token_p95'] * 1000:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
