"""Benchmark: how long a machine on the LAN takes to find the swarm by mDNS, and to join it.

A LAN of network namespaces on one bridge (harness/lan_bridge.py; root only). Machine a runs
`swarmllm bootstrap` with no flags: it finds no swarm, starts one and advertises it. On b:
- discovery: `lan_probe discover --settle 0` (swarm/lan.py's discover_peers, ending at the
  first answer), `--runs` times: from the start of discovery to having a's address, measured in
  the probe (no interpreter start), and the probe process's wall time around it;
- join: `swarmllm serve --blocks 0:2` with no flags, then the same with `--initial-peers`
  (a's address, no discovery), `--serve-runs` times each, alternating: wall time from starting
  the process to its ready line (both load the same 2 blocks, with --throughput given so
  nothing is measured), and the discovery time the node printed. Each run's record is read
  back through a's address before the next starts: it joined a's swarm, not a new one.
The namespaces share this machine's CPU and have no link delay: the figures are mDNS's own
delays (the responder's random 20-120 ms, zeroconf's first-query delay) plus Python, not a
slow network's.

    sudo python benchmarks/lan_discovery.py [--quick] [--runs 10] [--serve-runs 5] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from swarmllm.harness.lan_bridge import LanBridge, unavailable
from swarmllm.harness.processes import ManagedProcess

MODEL = "smollm2-135m"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: list[float]) -> dict:
    return {"runs": len(values), "median_s": round(statistics.median(values), 4),
            "p95_s": round(percentile(values, 0.95), 4), "min_s": round(min(values), 4),
            "max_s": round(max(values), 4), "samples_s": [round(v, 4) for v in values]}


def start(lan: LanBridge, machine: str, name: str, argv: list[str], log_dir: Path, timeout: float = 180):
    proc = ManagedProcess(name, lan.command(machine, argv), log_dir / f"{name}.log")
    began = time.perf_counter()
    proc.start(dict(os.environ))
    while proc.poll_ready() is None:
        if not proc.alive or time.perf_counter() - began > timeout:
            raise SystemExit(f"{name} did not start:\n{proc.log_tail()}")
        time.sleep(0.02)
    return proc, time.perf_counter() - began


def probe(lan: LanBridge, machine: str, *args: str) -> tuple[dict, float]:
    began = time.perf_counter()
    out = subprocess.run(lan.command(machine, [sys.executable, "-m", "swarmllm.harness.lan_probe", *args]),
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise SystemExit(f"lan_probe {args[0]} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1]), time.perf_counter() - began


def discovery_runs(lan: LanBridge, a_address: str, runs: int) -> dict:
    inside, wall = [], []
    for _ in range(runs):
        found, seconds = probe(lan, "b", "discover", "--timeout", "5", "--settle", "0")
        if a_address not in found["addresses"]:
            raise SystemExit(f"discovery on b did not find a ({a_address}): {found}")
        inside.append(found["seconds"])
        wall.append(seconds)
        time.sleep(1.1)  # an mDNS responder multicasts a record at most once a second (RFC 6762 6)
    return {"discovery": summary(inside), "probe_process_wall": summary(wall)}


def serve_runs(lan: LanBridge, a_address: str, runs: int, log_dir: Path) -> dict:
    modes = {"no_flags": [], "initial_peers": []}
    printed: list[float] = []
    for i in range(runs):
        for mode in modes:
            argv = [sys.executable, "-m", "swarmllm.cli", "serve", "--model", MODEL, "--blocks", "0:2",
                    "--throughput", "50", "--num-threads", "1", "--identity", str(log_dir / f"b-{mode}.key")]
            argv += ["--initial-peers", a_address] if mode == "initial_peers" else []
            proc, seconds = start(lan, "b", f"serve-{mode}-{i}", argv, log_dir)
            try:
                if mode == "no_flags":
                    match = re.search(r"on the local network in ([0-9.]+) s: joining through .*" + re.escape(a_address),
                                      proc.log_tail(60))
                    if match is None:
                        raise SystemExit(f"serve with no flags did not join through a:\n{proc.log_tail()}")
                    printed.append(float(match.group(1)))
                record, _ = probe(lan, "a", "record", "--initial-peers", a_address, "--model", MODEL,
                                  "--peer", proc.ready["peer_id"], "--timeout", "20")
                if not record["found"]:
                    raise SystemExit(f"serve ({mode}) is not in a's swarm:\n{proc.log_tail()}")
            finally:
                proc.stop()
            modes[mode].append(seconds)
    no_flags, explicit = statistics.median(modes["no_flags"]), statistics.median(modes["initial_peers"])
    return {"serve_no_flags_to_ready": summary(modes["no_flags"]),
            "serve_initial_peers_to_ready": summary(modes["initial_peers"]),
            "discovery_printed_by_serve": summary(printed),
            "lan_overhead_median_s": round(no_flags - explicit, 4)}


def write_table(result: dict, path: Path) -> None:
    d, w = result["discovery"], result["probe_process_wall"]
    lines = ["# LAN discovery (mDNS)", "",
             f"{result['machine']}; namespaces on one bridge (no link delay), {d['runs']} discoveries, "
             f"{result['serve_no_flags_to_ready']['runs']} serves of each kind.", "",
             "| what | median s | p95 s | min s | max s |", "|---|---|---|---|---|",
             f"| discovery: start to the swarm's address (in-process) | {d['median_s']} | {d['p95_s']} | "
             f"{d['min_s']} | {d['max_s']} |",
             f"| discovery process, wall (Python start + imports + discovery) | {w['median_s']} | {w['p95_s']} | "
             f"{w['min_s']} | {w['max_s']} |"]
    for key, label in (("discovery_printed_by_serve", "discovery inside `serve` (what it prints)"),
                       ("serve_no_flags_to_ready", "`serve` with no flags: start to ready"),
                       ("serve_initial_peers_to_ready", "`serve --initial-peers`: start to ready")):
        x = result[key]
        lines.append(f"| {label} | {x['median_s']} | {x['p95_s']} | {x['min_s']} | {x['max_s']} |")
    lines += ["", f"LAN discovery adds {result['lan_overhead_median_s']} s (median) to a `serve` that is given "
                  "no peers, against one given the bootstrap's address."]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 discoveries, 1 serve of each kind")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--serve-runs", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).with_name("results")))
    args = parser.parse_args()
    reason = unavailable()
    if reason is not None:
        raise SystemExit(f"this benchmark runs on network namespaces: {reason}")
    runs, serve_count = (3, 1) if args.quick else (args.runs, args.serve_runs)
    log_dir = Path(tempfile.mkdtemp(prefix="swarmllm-lan-bench-"))
    with LanBridge.create(["a", "b"]) as lan:
        bootstrap, _ = start(lan, "a", "bootstrap", [sys.executable, "-m", "swarmllm.cli", "bootstrap", "--port", "0",
                                                     "--identity", str(log_dir / "a.key")], log_dir)
        try:
            a_address = next(x for x in bootstrap.ready["addresses"] if f"/ip4/{lan.address('a')}/" in x)
            time.sleep(1.1)
            result = {"machine": f"{platform.machine()}, CPython {platform.python_version()}, {os.cpu_count()} cores",
                      **discovery_runs(lan, a_address, runs), **serve_runs(lan, a_address, serve_count, log_dir)}
        finally:
            bootstrap.stop()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lan_discovery.json").write_text(json.dumps(result, indent=2) + "\n")
    write_table(result, out / "lan_discovery.md")
    print((out / "lan_discovery.md").read_text())


if __name__ == "__main__":
    main()
