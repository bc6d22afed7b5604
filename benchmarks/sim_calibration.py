"""Calibration: the simulator's predictions against real runs of the same configurations, in one run.

First the real half (benchmarks/sim_measure.py): this machine's compute profile (seconds per block
per batch size, per prompt position, per verify-step length; the client's LM head and per-token
work), then eleven real swarms on loopback (C1-C11: 1 to 6 nodes, plain and ring, behind the
'continent' relays, speculative, 4 sessions with and without batching, a server SIGKILLed
mid-generation). Then each configuration is described to the simulator (sim/scenario.py): the same
spans, threads, relays, prompt length, token count, sessions and failure, the measured profile as
the nodes' and the client's hardware, the nodes and the client sharing this machine's cores.

Two constants are not in the profile and are fitted on two anchor configurations, then held for
the rest: the per-hop overhead (framing, the p2pd daemons) and a per-step overhead of the chain's
software path (event loops, receipts, asyncio; paid as latency once per token, in plain and ring
decoding alike), from C3 (3 hops) and C5 (6 hops) by solving
    per-token(C) = simulated per-token(C, both 0) + messages per token(C) x hop + client step.
The other nine configurations are predictions. Speculative decoding's acceptance and the share of
steps that carried a draft are properties of the text and the drafter, not of the swarm: they are
taken from the real C8 run and given to the simulator.

    python benchmarks/sim_calibration.py [--repeats 3] [--quick] [--from-json benchmarks/results/sim_measured.json]

Writes benchmarks/results/sim_calibration.{json,md}. --from-json predicts against an earlier measurement
(no swarm is started); without it, measurement and prediction are one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from swarmllm.sim import simulate  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TOLERANCE = 0.15
ANCHORS = ("C3", "C5")   # same threads per node (1), 3 and 6 hops: the hop overhead is their difference


def hardware(profile: dict, prompt_tokens: int, threads: int) -> dict:
    decode = {int(n): v["seconds_per_block"] for n, v in profile["decode_batch"]["by_batch_size"].items()}
    prefill = profile["prefill"]
    nearest = min(prefill, key=lambda t: abs(int(t) - prompt_tokens))
    return {"memory_gb": 20, "threads": threads, "up_mbps": 1e6, "down_mbps": 1e6, "profile": {
        "decode_by_batch": decode,
        "prefill_per_position": prefill[nearest]["seconds_per_block_per_position"],
        "steps_by_positions": {int(k): v for k, v in profile["short_step_seconds_per_block"].items()},
        "head_per_position": profile["client"]["lm_head_one_row_seconds"]}}


def client_hardware(profile: dict, threads: int) -> dict:
    """The client's head and per-token work (embedding, sampling, framing) as measured in one process."""
    c = profile["client"]
    return {"memory_gb": 20, "threads": threads, "up_mbps": 1e6, "down_mbps": 1e6, "profile": {
        "decode_by_batch": {1: 1.0}, "prefill_per_position": 0.0, "head_per_position": c["per_token_seconds"]}}


def scenario(name: str, config: dict, measured: dict, hop_ms: float, client_ms: float) -> dict:
    profiles = measured["profiles"]
    cores = measured["machine"]["cpus"]
    client_threads = measured["machine"].get("client_torch_threads", cores)
    hw = {}
    nodes = []
    for node, threads in zip(config["nodes"], config["threads_per_node"]):
        key = f"node-{threads}t"
        hw.setdefault(key, hardware(profiles[str(threads)], config["prompt_tokens"], threads))
        profile = node.get("link_profile") or {}
        nodes.append({"hardware": key, "blocks": list(node["blocks"]), "host": "machine",
                      "delay_ms": (profile.get("rtt_ms") or 0) / 2,
                      "link_mbps": profile.get("rate_mbit") or 1e6})
    hw["client"] = client_hardware(profiles[str(client_threads)] if str(client_threads) in profiles
                                   else profiles[max(profiles)], client_threads)
    ping = statistics.median(v for v in config["ping_rtt_ms"].values() if v) if config.get("ping_rtt_ms") else 0.5
    loopback = ping if config.get("network") in (None, "loopback") else 0.5
    decoding = {"ring": bool(config.get("ring")), "wire": config.get("wire_dtype", "bfloat16")}
    spec = config.get("speculation")
    if spec:
        decoding["speculative_acceptance"] = spec["acceptance_rate"]
        decoding["speculative_draft_share"] = spec["rounds"] / max(1.0, spec["forward_steps"] - 1)
        decoding["speculative_bursty"] = True   # n-gram drafts: 3.25 of 7 accepted per round at 46% acceptance
    s = {
        "name": name, "seed": 1, "duration_s": 600, "model": "smollm2-135m",
        "network": {"model": "relays", "hop_overhead_ms": hop_ms, "loopback_rtt_ms": min(loopback, 2.0)},
        "hardware": hw, "hosts": {"machine": {"cores": cores}}, "nodes": nodes,
        "server": {"rebalance_period_s": 0, "batching": max(config["max_batch_per_node"]) > 1,
                   "max_batch": max(config["max_batch_per_node"])},
        "clients": {"hardware": "client", "host": "machine", "concurrency": config["sessions"],
                    "sessions": config["sessions"], "prompt_tokens": config["prompt_tokens"],
                    "new_tokens": config["generated_tokens"], "start_s": 1.0, "step_overhead_ms": client_ms},
        "decoding": decoding,
    }
    if name == "C11":
        killed = config["runs"][0].get("killed", {}) if config.get("runs") else {}
        s["failures"] = [{"after_tokens": int(killed.get("after_tokens", config["generated_tokens"] // 3)),
                          "hop": 1, "how": "kill"}]
    return s


SEEDS = 10   # each configuration is simulated with this many seeds (draws of acceptance, tie-breaks): the mean


def simulated(scenario_: dict, sessions: int) -> dict:
    runs = [predicted(simulate({**scenario_, "seed": seed}), sessions) for seed in range(1, SEEDS + 1)]
    keys = set.intersection(*(set(r) for r in runs))
    return {key: statistics.fmean(r[key] for r in runs) for key in keys}


def predicted(result: dict, sessions: int) -> dict:
    """The simulated figures in the real run's definitions (sim_measure.py)."""
    per = [p for p in result["per_session"] if p["first_token"] is not None]
    if not per:
        return {"decode_tokens_per_second": float("nan"), "ttft_ms": float("nan")}
    ttft = statistics.median((p["first_token"] - p["opened"]) * 1000 for p in per)
    if sessions > 1:   # the sessions' decode tokens summed over (last end - first first token)
        tokens = sum(p["tokens"] - 1 for p in per)
        span = max(p["last_token"] for p in per) - min(p["first_token"] for p in per)
        rate = tokens / span
    else:
        p = per[0]
        rate = (p["tokens"] - 1) / (p["last_token"] - p["first_token"])
    out = {"decode_tokens_per_second": rate, "ttft_ms": ttft}
    if per[0]["failover_seconds"]:
        out["failover_seconds"] = per[0]["failover_seconds"][0]
    return out


def messages_per_token(config: dict) -> int:
    return len(config["nodes"]) if config.get("ring") else len(config["nodes"]) + 1   # the hops a token crosses


def fit(measured: dict) -> tuple[float, float, dict]:
    """Per-hop and client-step overheads (ms) from the anchors (module docstring)."""
    base = {}
    for name in ANCHORS:
        config = measured["configs"][name]
        r = simulated(scenario(name, config, measured, 0.0, 0.0), config["sessions"])
        base[name] = (1 / config["decode_tokens_per_second"] - 1 / r["decode_tokens_per_second"],
                      messages_per_token(config))
    (gap_a, m_a), (gap_b, m_b) = (base[name] for name in ANCHORS)
    hop = max(0.0, (gap_b - gap_a) / (m_b - m_a))
    client = max(0.0, gap_a - m_a * hop)   # (negative values would mean the profile overstates compute: clamped)
    return hop * 1000, client * 1000, {k: {"per_token_gap_ms": v[0] * 1000, "messages": v[1]} for k, v in base.items()}


def compare(measured: dict) -> dict:
    hop_ms, client_ms, anchors = fit(measured)
    rows = {}
    for name, config in measured["configs"].items():
        if "decode_tokens_per_second" not in config:
            continue
        r = simulated(scenario(name, config, measured, hop_ms, client_ms), config["sessions"])
        row = {"description": config["description"], "anchor": name in ANCHORS,
               "measured_tokens_per_s": config["decode_tokens_per_second"],
               "predicted_tokens_per_s": r["decode_tokens_per_second"],
               "measured_ttft_ms": config["ttft_ms"], "predicted_ttft_ms": r["ttft_ms"]}
        row["tokens_error"] = row["predicted_tokens_per_s"] / row["measured_tokens_per_s"] - 1
        row["ttft_error"] = row["predicted_ttft_ms"] / row["measured_ttft_ms"] - 1
        row["within_15"] = abs(row["tokens_error"]) <= TOLERANCE and abs(row["ttft_error"]) <= TOLERANCE
        if "failover_seconds" in config:
            row["measured_failover_s"], row["predicted_failover_s"] = config["failover_seconds"], r.get(
                "failover_seconds")
        rows[name] = row
    predictions = [r for r in rows.values() if not r["anchor"]]
    return {"fitted": {"hop_overhead_ms": hop_ms, "client_step_overhead_ms": client_ms, "anchors": anchors},
            "configs": rows, "predictions": len(predictions),
            "predictions_within_15": sum(r["within_15"] for r in predictions)}


def markdown(result: dict, measured: dict, command: str) -> str:
    f = result["fitted"]
    lines = [f"# Simulator calibration: predicted vs measured (smollm2-135m, {measured['machine']['cpus']} CPUs, "
             f"{measured['new_tokens']} new tokens, median of {measured['repeats']})", "",
             f"`{command}` — load average {measured['load_average_1min_before']:.1f} before / "
             f"{measured['load_average_1min_after']:.1f} after.", "",
             f"Fitted on the anchors {', '.join(ANCHORS)} and held for the rest: per-hop overhead "
             f"{f['hop_overhead_ms']:.2f} ms, per-step overhead {f['client_step_overhead_ms']:.2f} ms. Everything else "
             "comes from the profile measured in the same run (sim_measure.py).", "",
             "| config | what | tok/s measured | predicted | error | TTFT ms measured | predicted | error | "
             "within 15% |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["configs"].items():
        lines.append(f"| {name}{' (anchor)' if r['anchor'] else ''} | {r['description']} | "
                     f"{r['measured_tokens_per_s']:.1f} | {r['predicted_tokens_per_s']:.1f} | {r['tokens_error']:+.0%} | "
                     f"{r['measured_ttft_ms']:.0f} | {r['predicted_ttft_ms']:.0f} | {r['ttft_error']:+.0%} | "
                     f"{'yes' if r['within_15'] else 'NO'} |")
    lines += ["", f"Predictions within 15% on both tok/s and TTFT: {result['predictions_within_15']} of "
                  f"{result['predictions']} (anchors excluded).", ""]
    fail = result["configs"].get("C11", {})
    if "measured_failover_s" in fail:
        lines.append(f"C11 failover: measured {fail['measured_failover_s']:.2f} s, predicted "
                     f"{(fail.get('predicted_failover_s') or float('nan')):.2f} s.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--from-json", type=Path, help="predict against this sim_measure.py output instead")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.monotonic()
    if args.from_json:
        measured = json.loads(args.from_json.read_text())
    else:
        import sim_measure
        measured = sim_measure.measure_all(repeats=args.repeats, quick=args.quick)
        (args.out / "sim_measured.json").write_text(json.dumps(measured, indent=2, default=str))
    result = compare(measured)
    result["wall_seconds"] = time.monotonic() - started
    command = "python benchmarks/sim_calibration.py " + " ".join(sys.argv[1:])
    result["command"] = command.strip()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sim_calibration.json").write_text(json.dumps(result, indent=2, default=str))
    (args.out / "sim_calibration.md").write_text(markdown(result, measured, command.strip()))
    print(markdown(result, measured, command.strip()))


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
