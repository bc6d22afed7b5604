"""Benchmark: speculative decoding through a 3-node smollm2-135m swarm, on loopback and behind
emulated WAN links (netem relays, see benchmarks/wan.py).

For each network profile it starts a swarm and generates greedily from prose prompts and
code-like prompts (whose replies repeat the prompt's identifiers) with speculation off,
with n-gram (prompt lookup) drafts and with early-exit drafts (the model's first blocks run
on the client). Per run: decode tokens/s, draft acceptance rate, mean accepted draft tokens
per verify round, tokens per pass through the swarm, and whether the tokens equal the
non-speculative run's (they must: greedy output does not change). Modes alternate prompt by
prompt and each (prompt, mode) runs `--repeats` times, keeping the fastest run: the machine
is shared, and a load spike during one run says nothing about speculation.

    python benchmarks/speculative.py [--profiles loopback,continent] [--tokens 64] [--repeats 2] [--quick]
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
MODES = ("off", "ngram", "early-exit")
PROMPTS = {
    "prose": [
        "Explain in a few paragraphs how bees build their hives and why the cells are hexagonal.",
        "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    ],
    "code": [
        "Add type hints to this Python function and return the whole function:\n"
        "def merge_user_records(user_records, extra_records, key_name):\n"
        "    merged_records = dict(user_records)\n"
        "    for record_key, record_value in extra_records.items():\n"
        "        if record_key in merged_records:\n"
        "            merged_records[record_key][key_name] = record_value[key_name]\n"
        "        else:\n"
        "            merged_records[record_key] = record_value\n"
        "    return merged_records\n",
        "Rename the variable `cnt` to `word_count` in this code and show the result:\n"
        "def count_words(text_lines):\n"
        "    cnt = {}\n"
        "    for line in text_lines:\n"
        "        for word in line.split():\n"
        "            cnt[word] = cnt.get(word, 0) + 1\n"
        "    return cnt\n",
    ],
}


def bench_profile(profile: str, params: SamplingParams, prompts: dict, draft_k: int, repeats: int,
                  log_dir: Path) -> dict:
    network = None if profile == "loopback" else profile
    swarm = LocalSwarm(MODEL, even_spans(30, 3), network=network, log_dir=log_dir)
    swarm.start(timeout=300)
    runs = []
    try:
        with SwarmClient.connect(swarm.initial_peers) as client:
            measured = client.ping([n.ready["peer_id"] for n in swarm.nodes], timeout=10)
            rtts = [measured[n.ready["peer_id"]] * 1000 for n in swarm.nodes if n.ready["peer_id"] in measured]
            for mode in MODES:  # warm-up: first session, kernels, the early-exit drafter's weights
                generate_text(MODEL, "Hi", GenerationOptions(SamplingParams(max_new_tokens=3), speculative=mode),
                              client=client)
            for kind, texts in prompts.items():
                for index, prompt in enumerate(texts):
                    results: dict = {mode: [] for mode in MODES}
                    for _ in range(repeats):
                        for mode in MODES:
                            r = generate_text(MODEL, prompt, GenerationOptions(params, speculative=mode,
                                                                               draft_k=draft_k), client=client)
                            r = {"decode_tokens_per_second": r.timings.decode_tokens_per_s, "token_ids": r.token_ids,
                                 "generated_tokens": r.generated_tokens,
                                 "speculation": r.speculation and r.speculation.as_dict()}
                            results[mode].append(r)
                            print(profile, kind, index, mode, f"{r['decode_tokens_per_second']:.2f} tokens/s",
                                  r["speculation"] and f"{r['speculation']['acceptance_rate']:.2f} accepted", flush=True)
                    plain_ids = results["off"][0]["token_ids"]
                    for mode in MODES:
                        fastest = max(results[mode], key=lambda r: r["decode_tokens_per_second"])
                        runs.append({"kind": kind, "prompt": index, "mode": mode,
                                     "decode_tokens_per_second": fastest["decode_tokens_per_second"],
                                     "all_tokens_per_second": [r["decode_tokens_per_second"] for r in results[mode]],
                                     "generated_tokens": fastest["generated_tokens"],
                                     "same_tokens_as_off": all(r["token_ids"] == plain_ids for r in results[mode]),
                                     "speculation": fastest["speculation"]})
    finally:
        swarm.stop()
    return {"profile": profile, "median_ping_rtt_ms": statistics.median(rtts) if rtts else None,
            "runs": runs, "summary": summarize(runs)}


def summarize(runs: list[dict]) -> dict:
    """Per prompt kind and mode: mean tokens/s, speed-up over off, acceptance, accepted per round."""
    out: dict = {}
    for kind in sorted({r["kind"] for r in runs}):
        off = [r for r in runs if r["kind"] == kind and r["mode"] == "off"]
        base = statistics.mean(r["decode_tokens_per_second"] for r in off)
        out[kind] = {}
        for mode in MODES:
            rows = [r for r in runs if r["kind"] == kind and r["mode"] == mode]
            if not rows:
                continue
            # speed-up per prompt, then averaged: each prompt is compared with its own plain run
            ups = [r["decode_tokens_per_second"] / o["decode_tokens_per_second"] for r, o in zip(rows, off)]
            spec = [r["speculation"] for r in rows if r["speculation"]]
            drafted = sum(s["drafted"] for s in spec)
            out[kind][mode] = {
                "decode_tokens_per_second": statistics.mean(r["decode_tokens_per_second"] for r in rows),
                "speedup": statistics.mean(ups), "speedup_of_mean_rate":
                    statistics.mean(r["decode_tokens_per_second"] for r in rows) / base,
                "acceptance_rate": sum(s["accepted"] for s in spec) / drafted if drafted else None,
                "accepted_per_round": (sum(s["accepted"] for s in spec) / sum(s["rounds"] for s in spec)
                                       if spec and sum(s["rounds"] for s in spec) else None),
                "tokens_per_step": statistics.mean(s["tokens_per_step"] for s in spec) if spec else 1.0,
                "same_tokens_as_off": all(r["same_tokens_as_off"] for r in rows),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", default="loopback,continent",
                        help="loopback (no relays) and/or netem profiles, comma-separated")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--draft-k", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="runs per prompt and mode; the fastest is kept")
    parser.add_argument("--quick", action="store_true", help="one prompt per kind, 8 tokens, loopback only (CI)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    prompts = {kind: texts[:1] for kind, texts in PROMPTS.items()} if args.quick else PROMPTS
    tokens, profiles = (8, ["loopback"]) if args.quick else (args.tokens, args.profiles.split(","))
    repeats = 1 if args.quick else args.repeats
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logs = Path(tempfile.mkdtemp(prefix="swarmllm-speculative-"))
    params = SamplingParams(max_new_tokens=tokens)
    load_before = os.getloadavg()[0]
    results = {"benchmark": "speculative", "model": MODEL, "new_tokens": tokens, "draft_k_max": args.draft_k,
               "cpus": os.cpu_count(), "load_average_before": load_before,
               "repeats": repeats, "profiles": [bench_profile(p, params, prompts, args.draft_k, repeats, logs / p)
                                                for p in profiles],
               "load_average_after": os.getloadavg()[0]}
    (out / "speculative.json").write_text(json.dumps(results, indent=2))
    (out / "speculative.md").write_text(markdown(results))
    print(markdown(results))


def markdown(r: dict) -> str:
    lines = [f"# Speculative decoding ({r['model']}, 3-node swarm, greedy, {r['new_tokens']} new tokens, "
             f"k <= {r['draft_k_max']} adaptive, fastest of {r['repeats']} runs, {r['cpus']} CPUs, load average {r['load_average_before']:.1f} "
             f"before / {r['load_average_after']:.1f} after)", "",
             "| network | prompts | speculation | decode tokens/s | speed-up | acceptance | accepted per round | "
             "tokens per pass | same tokens as off |", "|---|---|---|---|---|---|---|---|---|"]
    for p in r["profiles"]:
        rtt = f" ({p['median_ping_rtt_ms']:.1f} ms RTT)" if p["median_ping_rtt_ms"] else ""
        for kind, modes in p["summary"].items():
            for mode, s in modes.items():
                acc = "" if s["acceptance_rate"] is None else f"{s['acceptance_rate']:.0%}"
                per = "" if s["accepted_per_round"] is None else f"{s['accepted_per_round']:.2f}"
                lines.append(f"| {p['profile']}{rtt} | {kind} | {mode} | {s['decode_tokens_per_second']:.1f} | "
                             f"{s['speedup']:.2f}x | {acc} | {per} | {s['tokens_per_step']:.2f} | "
                             f"{'yes' if s['same_tokens_as_off'] else 'NO'} |")
    lines += ["", "Speed-up: per prompt, speculative tokens/s over the same prompt's plain run, averaged. "
              "Target (issue 5): >= 1.5x on code-like prompts at the continent profile."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
