"""What a relay costs per token (issue 13): JSON in benchmarks/results/nat_relay.json.

Lab (harness/netns.py: network namespaces, an nftables router that masquerades and drops inbound
connections): the bootstrap (the relay), server A [0, 15), server P [15, 30) and the client are
machines of their own on the public segment; server H [15, 30) sits behind the router. H's probe
finds it undialable, so it is reached through the bootstrap's circuit. The client pins its chain
A -> P (direct) or A -> H (relayed) and generates greedily, alternating the two, `--runs` times each
with `--tokens` new tokens, with ring decoding on and off. Reported: decode ms/token per path, the
relay's added ms/token (relayed - direct), the ping RTT the client measures to P and H (what routing
counts), and whether every generation equals the single-process reference.

No link delay is added (netem is missing here): the figures are the relay's own processing and its
extra hop on one machine, the floor of what a relay costs; over a WAN add the relay's RTT.

    sudo python benchmarks/nat_relay.py [--runs 5 --tokens 32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

MODEL = "smollm2-135m"
PROMPT = "Write a short story about a lighthouse keeper."
ROOT = Path(__file__).resolve().parents[1]


def client_main(args) -> None:
    """Runs inside the client's namespace: the pinned generations, one JSON line on stdout."""
    from swarmllm.client.generation import ClientModel, GenerationOptions, Generator
    from swarmllm.client.swarm_client import SwarmClient
    from swarmllm.engine.sampling import SamplingParams

    model = ClientModel.load(MODEL)
    prompt = model.prompt_ids(PROMPT)
    out = {"runs": [], "rtt_ms": {}}
    with SwarmClient.connect(args.peers.split(","), keep_state=False) as client:
        tails = {"direct": args.direct, "relayed": args.relayed}
        client.plan(MODEL, 30, 8)  # learn the records (and with them the relayed node's circuit)
        for run in range(args.runs):
            for path, tail in tails.items():
                for ring in (True, False):
                    chain = client.plan(MODEL, 30, len(prompt) + args.tokens + 1,
                                        exclude=[p for p in tails.values() if p != tail])
                    assert chain[-1].peer_id == tail, (path, [c.peer_id for c in chain])
                    options = GenerationOptions(sampling=SamplingParams(max_new_tokens=args.tokens), ring=ring)
                    with Generator.swarm(model, client).start(prompt, options, chain=chain) as generation:
                        for _ in generation:
                            pass
                    result = generation.result()
                    out["runs"].append({"path": path, "ring": ring, "decoding": result.decoding,
                                        "token_ids": result.token_ids,
                                        "decode_tokens_per_s": result.timings.decode_tokens_per_s,
                                        "connection": client.connection_paths([tail])[tail]})
        for path, tail in tails.items():
            rtts = [client.ping([tail]).get(tail) for _ in range(20)]
            out["rtt_ms"][path] = statistics.median(r * 1000 for r in rtts if r is not None)
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "nat_relay.json"))
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--peers", help=argparse.SUPPRESS)
    parser.add_argument("--direct", help=argparse.SUPPRESS)
    parser.add_argument("--relayed", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        return client_main(args)

    from swarmllm.client.generation import generate_text
    from swarmllm.engine.sampling import SamplingParams
    from swarmllm.harness import netns
    from swarmllm.harness.local_swarm import wait_ready

    usable, why = netns.available()
    if not usable:
        sys.exit(f"cannot build the NAT lab: {why}")
    log_dir = Path(tempfile.mkdtemp(prefix="nat-relay-"))
    env = {**os.environ, "SWARMLLM_HOME": str(log_dir / "home"), "OMP_NUM_THREADS": "1"}
    processes = []
    with netns.NatLab(f"swb{os.getpid() % 10000}", homes=1) as lab:
        try:
            boot_ns, boot_host = lab.add_public_host()
            bootstrap = lab.start(boot_ns, "bootstrap", log_dir, env, "bootstrap", "--host", boot_host, "--port",
                                  "31337", "--identity", str(log_dir / "b.key"))
            processes.append(bootstrap)
            wait_ready([bootstrap], 60)
            peers = ",".join(a for a in bootstrap.ready["addresses"] if boot_host in a)
            common = ["--initial-peers", peers, "--num-threads", "1", "--rebalance-period", "0", "--model", MODEL]
            specs = {"a": ("0:15", *lab.add_public_host()), "p": ("15:30", *lab.add_public_host()),
                     "h": ("15:30", lab.home(1), lab.home_address(1))}
            servers = {name: lab.start(ns, f"server-{name}", log_dir, env, "serve", "--blocks", blocks, "--host", host,
                                       "--identity", str(log_dir / f"{name}.key"), *common)
                       for name, (blocks, ns, host) in specs.items()}
            processes += servers.values()
            wait_ready(list(servers.values()), 300)
            client_ns, _ = lab.add_public_host()
            done = subprocess.run([*lab.exec(client_ns), sys.executable, __file__, "--client", "--peers", peers,
                                   "--direct", servers["p"].ready["peer_id"], "--relayed",
                                   servers["h"].ready["peer_id"], "--runs", str(args.runs), "--tokens",
                                   str(args.tokens)], capture_output=True, text=True, env=env, timeout=1800)
            if done.returncode != 0:
                sys.exit(f"client failed:\n{done.stderr[-4000:]}")
            measured = json.loads(done.stdout.strip().splitlines()[-1])
        finally:
            for proc in reversed(processes):
                proc.stop()
    reference = generate_text(MODEL, PROMPT, SamplingParams(max_new_tokens=args.tokens)).token_ids
    summary = {}
    for ring in (True, False):
        row = {}
        for path in ("direct", "relayed"):
            runs = [r for r in measured["runs"] if r["path"] == path and r["ring"] == ring]
            ms = [1000.0 / r["decode_tokens_per_s"] for r in runs]
            row[path] = {"ms_per_token_median": statistics.median(ms), "ms_per_token_runs": ms,
                         "tokens_per_s_median": statistics.median(r["decode_tokens_per_s"] for r in runs),
                         "connections": sorted({r["connection"] for r in runs}),
                         "decoding": sorted({r["decoding"] for r in runs}),
                         "exact": all(r["token_ids"] == reference for r in runs)}
        row["relay_overhead_ms_per_token"] = row["relayed"]["ms_per_token_median"] - row["direct"]["ms_per_token_median"]
        summary["ring" if ring else "plain"] = row
    report = {"benchmark": "nat_relay", "model": MODEL, "runs": args.runs, "tokens": args.tokens,
              "setting": "network namespaces on one 2-core machine, no added link delay; relay = the bootstrap",
              "rtt_ms": measured["rtt_ms"], "results": summary,
              "command": f"python benchmarks/nat_relay.py --runs {args.runs} --tokens {args.tokens}"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: {p: v[p]["ms_per_token_median"] if isinstance(v.get(p), dict) else v.get(p)
                          for p in ("direct", "relayed", "relay_overhead_ms_per_token")}
                      for k, v in summary.items()}, indent=2), "\nrtt_ms", measured["rtt_ms"])


if __name__ == "__main__":
    main()
