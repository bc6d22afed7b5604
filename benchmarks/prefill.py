"""Benchmark: time to first token of a ~1,000-token prompt on a 3-node chain, one-piece vs pipelined prefill.

One-piece prefill runs the whole prompt through node A, then B, then C: each waits for the
one before. Pipelined prefill cuts it into chunks sent back to back, so B works on chunk 1
while A works on chunk 2. Each setting is timed `--repeats` times on the same swarm
(median), and its first tokens are compared with the local reference chunked the same way.

    python benchmarks/prefill.py [--chunks none,64,128,256] [--repeats 3] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from swarmllm.client.generation import GenerationOptions, generate_text  # noqa: E402
from swarmllm.client.swarm_client import SwarmClient  # noqa: E402
from swarmllm.engine.sampling import SamplingParams  # noqa: E402
from swarmllm.harness.local_swarm import LocalSwarm, even_spans  # noqa: E402

MODEL = "smollm2-135m"
PARAGRAPH = ("The history of the bicycle starts in the early nineteenth century, when inventors in Germany and "
             "France tried to build a machine that a person could ride without a horse, pushing it along with "
             "their feet. Pedals, chains and pneumatic tyres came decades later. ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", default="none,64,128,256")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--paragraphs", type=int, default=20, help="prompt length (20 = about 1,000 tokens)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    prompt = PARAGRAPH * args.paragraphs + "Summarise the text above in one sentence."
    params = SamplingParams(max_new_tokens=8)
    chunks = [None if c == "none" else int(c) for c in args.chunks.split(",")]
    swarm = LocalSwarm(MODEL, even_spans(30, 3), log_dir=Path(tempfile.mkdtemp(prefix="swarmllm-prefill-")))
    swarm.start(timeout=300)
    rows = []
    try:
        with SwarmClient.connect(swarm.initial_peers) as client:
            generate_text(MODEL, "warm up", SamplingParams(max_new_tokens=2), client=client)
            for chunk in chunks:
                reference = generate_text(MODEL, prompt, GenerationOptions(params, prefill_chunk=chunk))
                runs = [generate_text(MODEL, prompt, GenerationOptions(params, prefill_chunk=chunk, ring=False),
                                      client=client)
                        for _ in range(args.repeats)]
                rows.append({"prefill_chunk": chunk, "prompt_tokens": runs[0].prompt_tokens,
                             "ttft_seconds": statistics.median(r.timings.ttft_s for r in runs),
                             "ttft_all": [r.timings.ttft_s for r in runs],
                             "equal_to_local": all(r.token_ids == reference.token_ids for r in runs),
                             "token_ids": runs[0].token_ids})
                print(rows[-1]["prefill_chunk"], rows[-1]["ttft_seconds"], flush=True)
    finally:
        swarm.stop()
    one_piece = next((r for r in rows if r["prefill_chunk"] is None), None)
    for r in rows:
        r["speedup_vs_one_piece"] = one_piece["ttft_seconds"] / r["ttft_seconds"] if one_piece else None
        r["same_tokens_as_one_piece"] = one_piece is not None and r["token_ids"] == one_piece["token_ids"]
    result = {"benchmark": "prefill", "model": MODEL, "nodes": 3, "cpus": os.cpu_count(),
              "load_average": os.getloadavg(), "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "prefill.json").write_text(json.dumps(result, indent=2))
    lines = [f"# Pipelined prefill ({MODEL}, 3 nodes on loopback, {rows[0]['prompt_tokens']}-token prompt, "
             f"{result['cpus']} CPUs)", "",
             "| prefill chunk | TTFT (s, median) | vs one piece | equal to local (same chunks) | same tokens as one piece |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['prefill_chunk'] or 'one piece'} | {r['ttft_seconds']:.2f} | {r['speedup_vs_one_piece']:.2f}x "
                     f"| {r['equal_to_local']} | {r['same_tokens_as_one_piece']} |")
    (out / "prefill.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
