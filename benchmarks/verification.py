"""What verification catches and costs (issue 12, point 7): JSON + markdown in benchmarks/results/.

Swarm (real processes on loopback): honest nodes on blocks [0, 15) x2 and [15, 30) x2 (smollm2-135m,
float32), plus, for the liar trials, a lying node on [15, 30) (tests/adversarial/liar.py "noise:P":
each step's output perturbed with probability P).

- Liar trials, for P in {0.01, 0.05, 0.3} and modes off / sample / strict: a fresh client (empty
  reputation) generates greedily with the first chain pinned through the liar. Steps to ban = the
  position of the wrong output that convicted it, minus the prompt (decode steps the liar served
  before it was caught); a trial whose generation ends first counts as "not banned" (censored at the
  generation's length). Corrupted tokens delivered = tokens of the final text that differ from the
  single-process reference (from the first difference on); retracted = tokens streamed and then taken
  back by sample mode's rewind.
- False positives: honest swarm only (the liar stopped), generations until at least --honest-steps
  server-positions were compared with a witness in each mode; every mismatch would be a false accusation.
- Speed: decode tokens/s of off (ring and plain), sample and strict on the honest swarm, alternating
  the modes, --speed-runs generations of --speed-tokens tokens each.

    python benchmarks/verification.py            # full: ~40 min on 2 cores
    python benchmarks/verification.py --quick    # a small setting: ~5 min
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from swarmllm.client.generation import ClientModel, GenerationOptions, Generator, generate_text
from swarmllm.client.swarm_client import SwarmClient
from swarmllm.engine.sampling import SamplingParams
from swarmllm.harness.local_swarm import LocalSwarm

MODEL = "smollm2-135m"
ROOT = Path(__file__).resolve().parents[1]
LIAR = ROOT / "tests" / "adversarial" / "liar.py"
RESULTS = ROOT / "benchmarks" / "results"
PROMPTS = ["Write a long story about a lighthouse keeper and a storm.",
           "Explain in detail how bees make honey, step by step.",
           "Describe a journey across the desert, day by day.",
           "Tell the history of the bicycle, from the first designs to today."]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def corrupted(tokens: list[int], reference: list[int]) -> int:
    """Tokens from the first difference on (what a reader of the text gets wrong)."""
    for i, (a, b) in enumerate(zip(tokens, reference)):
        if a != b:
            return len(tokens) - i
    return max(0, len(tokens) - len(reference))


def generate(client: SwarmClient, model: ClientModel, prompt: str, tokens: int, verify: str, ring=None, chain=None):
    options = GenerationOptions(sampling=SamplingParams(max_new_tokens=tokens), verify=verify, ring=ring)
    generator = Generator.swarm(model, client)
    with generator.start(model.prompt_ids(prompt), options, chain=chain) as run:
        for _ in run:
            pass
    return run.result()


def liar_trials(swarm: LocalSwarm, model: ClientModel, p: float, modes: list[str], trials: int, tokens: int,
                references: dict) -> dict:
    liar = swarm.add_node(15, 30, name=f"liar-{p}", program=[sys.executable, str(LIAR), f"noise:{p}"])
    swarm.wait_ready([liar], timeout=240)
    liar_peer = liar.ready["peer_id"]
    honest_tail = [node.ready["peer_id"] for node in swarm.nodes[2:4]]
    out = {}
    try:
        for mode in modes:
            rows = []
            for trial in range(trials):
                prompt = PROMPTS[trial % len(PROMPTS)]
                with SwarmClient.connect(swarm.initial_peers, keep_state=False) as client:
                    chain = client.plan(MODEL, 30, 64, exclude=honest_tail)
                    assert chain[-1].peer_id == liar_peer
                    started = time.perf_counter()
                    result = generate(client, model, prompt, tokens, mode, ring=False, chain=chain)
                    seconds = time.perf_counter() - started
                v = result.verification
                n_prompt = result.prompt_tokens
                banned_at = dict(zip(v.banned, v.banned_at)).get(liar_peer)
                rows.append({"prompt": trial % len(PROMPTS), "banned": banned_at is not None,
                             "steps_to_ban": None if banned_at is None else max(0, banned_at - n_prompt + 1),
                             "tokens": result.generated_tokens,
                             "corrupted_tokens": corrupted(result.token_ids, references[prompt]),
                             "retracted_tokens": v.retracted_tokens, "mismatches": v.mismatches,
                             "steps_checked": v.steps_checked, "rewinds": v.rewinds, "seconds": round(seconds, 1)})
                print(f"p={p} {mode} trial {trial}: {rows[-1]}", flush=True)
            banned = [r["steps_to_ban"] for r in rows if r["banned"]]
            out[mode] = {"trials": rows, "banned": len(banned), "of": len(rows),
                         "steps_to_ban_median": statistics.median(banned) if banned else None,
                         "steps_to_ban_p95": percentile(banned, 0.95) if banned else None,
                         "corrupted_tokens": sum(r["corrupted_tokens"] for r in rows),
                         "retracted_tokens": sum(r["retracted_tokens"] for r in rows)}
    finally:
        liar.stop()
    return out


def false_positives(swarm: LocalSwarm, model: ClientModel, mode: str, honest_steps: int, tokens: int,
                    references: dict) -> dict:
    checked = mismatches = generations = wrong = 0
    with SwarmClient.connect(swarm.initial_peers, keep_state=False) as client:
        while checked < honest_steps:
            prompt = PROMPTS[generations % len(PROMPTS)]
            result = generate(client, model, prompt, tokens, mode)
            generations += 1
            checked += result.verification.steps_checked
            mismatches += result.verification.mismatches + len(result.verification.banned)
            wrong += corrupted(result.token_ids, references[prompt]) > 0
            print(f"honest {mode}: {checked} checked, {mismatches} mismatches", flush=True)
    return {"server_positions_checked": checked, "generations": generations, "false_positives": mismatches,
            "texts_unlike_reference": wrong}


def speed(swarm: LocalSwarm, model: ClientModel, runs: int, tokens: int) -> dict:
    modes = {"off-ring": ("off", None), "off-plain": ("off", False), "sample": ("sample", None),
             "strict": ("strict", None)}
    rates: dict[str, list[float]] = {name: [] for name in modes}
    with SwarmClient.connect(swarm.initial_peers, keep_state=False) as client:
        generate(client, model, PROMPTS[0], 8, "off")  # warm up the nodes and the client's estimates
        for run in range(runs):
            for name, (verify, ring) in modes.items():
                result = generate(client, model, PROMPTS[run % len(PROMPTS)], tokens, verify, ring=ring)
                rates[name].append(round(result.timings.decode_tokens_per_s, 2))
                print(f"speed {name}: {rates[name][-1]} tok/s ({result.decoding})", flush=True)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    return {"runs": rates, "median_tokens_per_s": medians,
            "vs_off_plain": {name: round(medians[name] / medians["off-plain"], 3) for name in medians},
            "vs_off_ring": {name: round(medians[name] / medians["off-ring"], 3) for name in medians}}


def markdown(report: dict) -> str:
    lines = ["# Verification: what it catches and what it costs", "",
             f"`python benchmarks/verification.py{' --quick' if report['quick'] else ''}`; {report['setup']}", "",
             "## A liar on [15, 30) perturbing each step's output with probability p", "",
             "| p | mode | banned | steps to ban: median / p95 | corrupted tokens delivered | streamed, then retracted |",
             "|---|---|---|---|---|---|"]
    for p, modes in report["liars"].items():
        for mode, row in modes.items():
            steps = "-" if row["steps_to_ban_median"] is None else \
                f"{row['steps_to_ban_median']:g} / {row['steps_to_ban_p95']:g}"
            lines.append(f"| {p} | {mode} | {row['banned']} of {row['of']} | {steps} | {row['corrupted_tokens']} | "
                         f"{row['retracted_tokens']} |")
    lines += ["", "## Honest swarm: false positives", "", "| mode | server-positions checked | generations | "
              "false positives | texts unlike the reference |", "|---|---|---|---|---|"]
    for mode, row in report["false_positives"].items():
        lines.append(f"| {mode} | {row['server_positions_checked']} | {row['generations']} | "
                     f"{row['false_positives']} | {row['texts_unlike_reference']} |")
    s = report["speed"]
    lines += ["", "## Decode speed on the honest swarm (median tokens/s)", "",
              "| mode | tokens/s | vs off (plain) | vs off (ring) |", "|---|---|---|---|"]
    for name, value in s["median_tokens_per_s"].items():
        lines.append(f"| {name} | {value:.2f} | {s['vs_off_plain'][name]:.2f}x | {s['vs_off_ring'][name]:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small setting (few trials, 1,000 honest positions)")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=160, help="new tokens per liar trial")
    parser.add_argument("--honest-steps", type=int, default=10_000)
    parser.add_argument("--speed-runs", type=int, default=4)
    parser.add_argument("--speed-tokens", type=int, default=64)
    parser.add_argument("--out", default=str(RESULTS / "verification"))
    parser.add_argument("--parts", default="speed,false_positives,liars",
                        help="which parts to run; the others are kept from the last results file, if any")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.tokens, args.honest_steps, args.speed_runs = 2, 48, 1000, 2
    model = ClientModel.load(MODEL)
    parts = set(args.parts.split(","))
    references = {} if parts <= {"speed"} else {
        prompt: generate_text(MODEL, prompt, SamplingParams(max_new_tokens=max(2 * args.tokens, 64))).token_ids
        for prompt in PROMPTS}
    swarm = LocalSwarm(MODEL, [(0, 15), (0, 15), (15, 30), (15, 30)],
                       log_dir=Path(tempfile.mkdtemp(prefix="swarmllm-verification-")))
    swarm.start(timeout=300)
    started = time.time()
    out = Path(args.out + ("-quick" if args.quick else ""))
    try:
        report = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
        report.update({"quick": args.quick, "setup": (
            "AMD EPYC, 2 cores, one machine: 4 honest nodes (smollm2-135m float32, blocks [0,15) x2 and [15,30) x2, "
            "1 torch thread each), loopback; greedy decoding; the liar trials pin the first chain through the liar"),
            "args": {**report.get("args", {}), **{part: vars(args) for part in parts}}})
        if "speed" in parts:
            report["speed"] = speed(swarm, model, args.speed_runs, args.speed_tokens)
        if "false_positives" in parts:
            report["false_positives"] = {mode: false_positives(swarm, model, mode, args.honest_steps, 64, references)
                                         for mode in ("sample", "strict")}
        if "liars" in parts:
            report["liars"] = {str(p): liar_trials(swarm, model, p, ["off", "sample", "strict"], args.trials,
                                                   args.tokens * (2 if p == 0.01 else 1), references)
                               for p in (0.01, 0.05, 0.3)}
        if not isinstance(report.get("seconds"), dict):
            report["seconds"] = {}
        report["seconds"][",".join(sorted(parts))] = round(time.time() - started)
    finally:
        swarm.stop()
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
