"""Benchmark: what the API's sampling defaults make the catalog models write, before and after.

"Before" is what a request that sets nothing got until the catalog carried recommended sampling:
OpenAI's defaults (temperature 1, top_p 1, no penalty). "After" is the model's recommendation
(models/catalog.py, e.g. smollm2-135m: temperature 0.2, top_p 0.9, repetition_penalty 1.1). Both
run in one process on the same engine the swarm runs, chat template applied, seeds 0..S-1, for the
README's example prompts and the haiku that looped. Per reply it records the text, whether it hit
max_tokens, and how repetitive it is (the share of its lines that repeat an earlier line, and the
longest run of one repeated line).

Then, with --swarm, the penalties go through a real 3-node swarm on loopback, plain and ring
decoding, and the tokens are compared with the in-process run: they must be equal.

    python benchmarks/sampling_defaults.py [--models smollm2-135m,gemma3-270m] [--seeds 3] [--tokens 96] [--swarm]

Writes benchmarks/results/sampling_defaults.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from swarmllm.client.generation import (  # noqa: E402
    ClientModel, GenerationOptions, Generator, recommended_sampling, sampling_options,
)
from swarmllm.engine.sampling import SamplingParams  # noqa: E402

PROMPTS = ["Hi!", "Hello!", "Name three colours of the rainbow.", "Write a haiku about the sea.",
           "Write a short story about a robot who learns to paint."]
OPENAI_DEFAULTS = {"temperature": 1.0, "top_p": 1.0}
RESULTS = Path(__file__).resolve().parent / "results"


def repetition(text: str) -> dict:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    repeated = sum(1 for i, line in enumerate(lines) if line in lines[:i])
    run = best = 0
    for i, line in enumerate(lines):
        run = run + 1 if i and line == lines[i - 1] else 1
        best = max(best, run)
    return {"lines": len(lines), "repeated_line_share": round(repeated / len(lines), 3) if lines else 0.0,
            "longest_repeated_run": best}


def generate(generator: Generator, prompt: str, sampling: dict, seed: int, tokens: int) -> dict:
    ids = generator.model.prompt_ids(prompt, None, False)
    params = SamplingParams(**sampling, seed=seed, max_new_tokens=tokens)
    result = generator.generate(ids, GenerationOptions(sampling=params))
    return {"seed": seed, "text": result.text, "finish_reason": result.finish_reason,
            "tokens": result.generated_tokens, **repetition(result.text)}


def compare_defaults(models: list[str], seeds: int, tokens: int) -> list[dict]:
    rows = []
    for model in models:
        generator = Generator.local(model)
        after = sampling_options({}, model)
        greedy = {"temperature": 0.0}
        for prompt in PROMPTS:
            for label, sampling in (("before", OPENAI_DEFAULTS), ("after", after), ("greedy", greedy),
                                    ("greedy+penalty", sampling_options(greedy, model))):
                runs = 1 if sampling.get("temperature") == 0 else seeds  # greedy: one reply whatever the seed
                replies = [generate(generator, prompt, sampling, seed, tokens) for seed in range(runs)]
                rows.append({"model": model, "prompt": prompt, "defaults": label, "sampling": sampling,
                             "replies": replies,
                             "hit_max_tokens": sum(r["finish_reason"] == "length" for r in replies),
                             "mean_repeated_line_share": round(sum(r["repeated_line_share"] for r in replies)
                                                               / len(replies), 3),
                             "worst_repeated_run": max(r["longest_repeated_run"] for r in replies)})
                print(f"{model} {label:6} {prompt[:40]!r}: {rows[-1]['hit_max_tokens']}/{len(replies)} at max_tokens, "
                      f"repeated lines {rows[-1]['mean_repeated_line_share']:.2f}", flush=True)
    return rows


def swarm_exactness(tokens: int) -> list[dict]:
    """Penalties through a real swarm (plain and ring) against the in-process run: tokens equal?"""
    from swarmllm.client.swarm_client import SwarmClient
    from swarmllm.harness.local_swarm import LocalSwarm

    model = "smollm2-135m"
    cases = [SamplingParams(**sampling_options({"temperature": 0}, model), max_new_tokens=tokens),
             SamplingParams(**sampling_options({}, model), seed=7, max_new_tokens=tokens),
             SamplingParams(temperature=0.8, top_k=40, min_p=0.05, repetition_penalty=1.3, frequency_penalty=0.5,
                            presence_penalty=0.3, penalty_last_n=-1, seed=9, max_new_tokens=tokens)]
    local = Generator.local(model)
    out = []
    with LocalSwarm(model, [(0, 10), (10, 20), (20, 30)], log_dir=Path(tempfile.mkdtemp(prefix="sampling-"))) as swarm:
        with SwarmClient.connect(swarm.initial_peers) as client:
            remote = Generator.swarm(ClientModel.load(model), client)
            for prompt in PROMPTS[2:]:
                ids = local.model.prompt_ids(prompt, None, False)
                for params in cases:
                    reference = local.generate(ids, GenerationOptions(sampling=params))
                    for ring in (False, None):
                        started = time.perf_counter()
                        got = remote.generate(ids, GenerationOptions(sampling=params, ring=ring))
                        out.append({"prompt": prompt, "sampling": {k: v for k, v in vars(params).items()
                                                                   if k not in ("stop",)},
                                    "decoding": got.decoding, "ring_fell_back": bool(got.ring and got.ring.plain_fallback),
                                    "tokens": got.generated_tokens, "equal_to_local": got.token_ids == reference.token_ids,
                                    "seconds": round(time.perf_counter() - started, 2)})
                        print(f"swarm {got.decoding:5} {prompt[:30]!r}: equal={out[-1]['equal_to_local']}", flush=True)
    return out


def markdown(report: dict) -> str:
    lines = ["# Sampling defaults: before (OpenAI's: temperature 1, top_p 1) and after (the catalog's)", "",
             f"`{report['command']}`, {report['date']}, in-process (the swarm's engine), chat template, "
             f"{report['seeds']} seeds, at most {report['tokens']} tokens.", "",
             "| model | prompt | defaults | at max_tokens | repeated lines | longest repeat | first reply (seed 0) |",
             "|---|---|---|---|---|---|---|"]
    for row in report["defaults"]:
        first = row["replies"][0]["text"].replace("\n", " ⏎ ").replace("|", "\\|")
        first = first if len(first) <= 160 else first[:157] + "..."
        lines.append(f"| {row['model']} | {row['prompt']} | {row['defaults']} {row['sampling']} | "
                     f"{row['hit_max_tokens']}/{len(row['replies'])} | {row['mean_repeated_line_share']:.2f} | "
                     f"{row['worst_repeated_run']} | {first} |")
    if report.get("swarm"):
        lines += ["", "## Penalties through a 3-node swarm (loopback) vs in-process", "",
                  "| prompt | sampling | decoding | tokens | equal to in-process |", "|---|---|---|---|---|"]
        for row in report["swarm"]:
            s = row["sampling"]
            label = ", ".join(f"{k}={s[k]}" for k in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                                                     "frequency_penalty", "presence_penalty", "penalty_last_n", "seed"))
            lines.append(f"| {row['prompt']} | {label} | {row['decoding']}{' (fell back)' if row['ring_fell_back'] else ''}"
                         f" | {row['tokens']} | {row['equal_to_local']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="smollm2-135m,gemma3-270m")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--tokens", type=int, default=96)
    p.add_argument("--swarm", action="store_true", help="also check penalties through a real swarm")
    args = p.parse_args()
    models = args.models.split(",")
    for model in models:
        print(f"{model}: recommended {recommended_sampling(model)}", flush=True)
    report = {"command": "python benchmarks/sampling_defaults.py " + " ".join(sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d"), "seeds": args.seeds, "tokens": args.tokens,
              "defaults": compare_defaults(models, args.seeds, args.tokens)}
    if args.swarm:
        report["swarm"] = swarm_exactness(min(args.tokens, 48))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sampling_defaults.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "sampling_defaults.md").write_text(markdown(report))
    print(f"wrote {RESULTS / 'sampling_defaults.json'}", flush=True)
    if args.swarm and not all(row["equal_to_local"] for row in report["swarm"]):
        print("penalties through the swarm differ from in-process", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
