"""Benchmark: does `serve --max-upload/--max-download 1Mbit` hold on the wire under load? (issue 15, point 2)

The node runs alone in a network namespace joined to the host by a veth pair (root; removed at the end),
so the veth's byte counters see every byte it sends or receives: stream traffic, TCP/IP, Noise and yamux
framing, and the DHT's maintenance. The bootstrap and the client run on the host. Three runs, each a fresh
node serving all blocks of the model: no cap, --max-upload RATE, --max-download RATE. In each run the
client drives `--sessions` concurrent generation loops (long prompts, float32 hidden states both ways)
for `--seconds`, and the counters are read every second. Before the first load, the idle node's counters
give the DHT's own rate. Reported per run and direction: the mean wire rate over the loaded window, the
worst (highest) 5 s window, and the client's own count of stream payload (wire / payload = the overhead).

    sudo python benchmarks/bandwidth_cap.py [--rate 1Mbit] [--seconds 25] [--sessions 2] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from swarmllm.cli_parser import bandwidth_rate  # noqa: E402
from swarmllm.harness.local_swarm import wait_ready  # noqa: E402
from swarmllm.harness.processes import ManagedProcess  # noqa: E402

MODEL = "smollm2-135m"
PROMPT = ("The history of the bicycle starts in the early nineteenth century, when inventors in Germany and France "
          "tried to build a machine that a person could ride without a horse, pushing it along with their feet. ") * 2


class Veth:
    """A namespace NAME joined to the host by a veth pair: host HOST_IP, namespace NODE_IP."""

    def __init__(self, tag: str):
        self.namespace, self.host_link, self.node_link = f"bw{tag}", f"bwh{tag}", f"bwn{tag}"
        self.host_ip, self.node_ip = "10.79.0.1", "10.79.0.2"
        steps = [["ip", "netns", "add", self.namespace],
                 ["ip", "-n", self.namespace, "link", "set", "lo", "up"],
                 ["ip", "link", "add", self.host_link, "type", "veth", "peer", "name", self.node_link],
                 ["ip", "link", "set", self.node_link, "netns", self.namespace],
                 ["ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_link],
                 ["ip", "link", "set", self.host_link, "up"],
                 ["ip", "-n", self.namespace, "addr", "add", f"{self.node_ip}/30", "dev", self.node_link],
                 ["ip", "-n", self.namespace, "link", "set", self.node_link, "up"]]
        try:
            for argv in steps:
                subprocess.run(argv, check=True, capture_output=True, text=True)
        except BaseException:
            self.close()
            raise

    def counters(self) -> tuple[int, int]:
        """(bytes the node sent, bytes it received): the host end's rx and tx."""
        base = Path("/sys/class/net") / self.host_link / "statistics"
        return int((base / "rx_bytes").read_text()), int((base / "tx_bytes").read_text())

    def close(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_link], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True)


def sample(veth: Veth, seconds: float, stop_early=lambda: False) -> list[tuple[float, int, int]]:
    """(time, sent, received) every second for `seconds`."""
    samples = [(time.monotonic(), *veth.counters())]
    while samples[-1][0] - samples[0][0] < seconds and not stop_early():
        time.sleep(1.0)
        samples.append((time.monotonic(), *veth.counters()))
    return samples


def rates(samples: list[tuple[float, int, int]], column: int) -> dict:
    """Mean bits/s over the samples and the highest mean over any 5 s window."""
    span = samples[-1][0] - samples[0][0]
    mean = (samples[-1][column] - samples[0][column]) * 8 / span
    windows = [(samples[i + 5][column] - samples[i][column]) * 8 / (samples[i + 5][0] - samples[i][0])
               for i in range(len(samples) - 5)]
    return {"mean_bps": mean, "worst_5s_bps": max(windows, default=mean), "seconds": span}


def load(peers: list[str], seconds: float, sessions: int) -> dict:
    """`sessions` generation loops through the swarm for `seconds`: the client's payload counts and errors."""
    from swarmllm.client.generation import GenerationOptions, generate_text
    from swarmllm.client.swarm_client import SwarmClient
    from swarmllm.engine.sampling import SamplingParams

    options = GenerationOptions(sampling=SamplingParams(max_new_tokens=4, temperature=0.0), wire_dtype="float32",
                                ring=False, prefill_chunk=None)
    client = SwarmClient.connect(peers, keep_state=False)
    errors: list[str] = []
    generations = [0]
    try:
        generate_text(MODEL, "warm up", options, client=client)  # the client's model and the route, before timing
        traffic = client.swarm.traffic
        sent0, received0 = traffic.bytes_sent, traffic.bytes_received
        deadline = time.monotonic() + seconds

        def loop(i: int) -> None:
            while time.monotonic() < deadline:
                try:
                    generate_text(MODEL, f"{i} {generations[0]} {PROMPT}", options, client=client, raw=True)
                    generations[0] += 1
                except Exception as e:  # counted: a cap must not make sessions fail
                    errors.append(f"{type(e).__name__}: {e}")

        threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(sessions)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        return {"payload_to_node_bytes": traffic.bytes_sent - sent0,
                "payload_from_node_bytes": traffic.bytes_received - received0, "seconds": elapsed,
                "generations": generations[0], "errors": errors[:5], "n_errors": len(errors)}
    finally:
        client.close()


def run_once(veth: Veth, peers: list[str], log_dir: Path, env: dict, caps: list[str], seconds: float,
             sessions: int, idle_seconds: float = 0.0) -> dict:
    name = "node-" + ("-".join(caps[::2]).strip("-") or "uncapped")
    argv = ["ip", "netns", "exec", veth.namespace, sys.executable, "-m", "swarmllm.cli", "serve", "--model", MODEL,
            "--blocks", "0:30", "--host", veth.node_ip, "--initial-peers", ",".join(peers), "--num-threads", "1",
            "--rebalance-period", "0", "--no-ring", "--name", name, *caps]
    node = ManagedProcess(name, argv, log_dir / f"{name}.log")
    wire_before = veth.counters()
    node.start({**env, "SWARMLLM_LOG_LEVEL": "INFO"})  # INFO: the node logs its stream counters at exit
    result: dict = {"caps": caps}
    try:
        wait_ready([node], 300)
        if idle_seconds:
            idle = sample(veth, idle_seconds)
            result["idle"] = {"sent": rates(idle, 1), "received": rates(idle, 2)}
        box: dict = {}
        driver = threading.Thread(target=lambda: box.update(load(peers, seconds, sessions)), daemon=True)
        driver.start()
        time.sleep(3.0)  # the client's model load and warm-up generation are not the loaded window
        samples = sample(veth, seconds - 1.0, stop_early=lambda: not driver.is_alive())
        driver.join()
        result.update(client=box, sent=rates(samples, 1), received=rates(samples, 2),
                      wire_sent_bytes=samples[-1][1] - samples[0][1], wire_received_bytes=samples[-1][2] - samples[0][2])
    finally:
        node.stop()
    wire_after = veth.counters()
    result["lifetime"] = {"wire_sent_bytes": wire_after[0] - wire_before[0],
                          "wire_received_bytes": wire_after[1] - wire_before[1], **node_counters(node)}
    return result


def node_counters(node: ManagedProcess) -> dict:
    """The node's own stream counters over its life (its exit log line): payload, as the caps see it."""
    for line in reversed((node.log_path.read_text(errors="replace")).splitlines()):
        if "stream traffic: " in line:
            counts = json.loads(line.split("stream traffic: ", 1)[1])
            return {"payload_sent_bytes": counts["bytes_sent"], "payload_received_bytes": counts["bytes_received"]}
    return {}


def table(report: dict) -> str:
    lines = ["| run | direction | cap (bit/s) | mean on the wire (bit/s) | worst 5 s (bit/s) | within 10% |",
             "|---|---|---|---|---|---|"]
    for run in report["runs"]:
        for direction, key in (("upload", "sent"), ("download", "received")):
            cap = run.get(f"max_{direction}_bps")
            ok = "" if cap is None else ("yes" if abs(run[key]["mean_bps"] / cap - 1) <= 0.10 else "NO")
            lines.append(f"| {run['name']} | {direction} | {cap or '-'} | {run[key]['mean_bps']:,.0f} | "
                         f"{run[key]['worst_5s_bps']:,.0f} | {ok} |")
    idle = report["idle_dht_bps"]
    lines.append(f"\nIdle node (DHT maintenance only): {idle['sent']:,.0f} bit/s up, {idle['received']:,.0f} bit/s down.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=bandwidth_rate, default=1e6, help="the cap to test (default 1Mbit)")
    parser.add_argument("--seconds", type=float, default=25.0, help="loaded window per run")
    parser.add_argument("--sessions", type=int, default=2, help="concurrent generation loops")
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="idle window for the DHT's own rate")
    parser.add_argument("--only", choices=("all", "upload", "download"), default="all")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--name", default="bandwidth_cap")
    args = parser.parse_args()
    report = measure(args.rate, args.seconds, args.sessions, args.idle_seconds, args.only)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(report, indent=2))
    (out / f"{args.name}.md").write_text(table(report))
    print(table(report))


def measure(rate: float, seconds: float, sessions: int, idle_seconds: float, only: str = "all") -> dict:
    """The three runs (or the uncapped one and one capped one, `only`) as a report."""
    if os.geteuid() != 0:
        raise SystemExit("this benchmark needs root (a network namespace and a veth pair)")
    veth = Veth(str(os.getpid() % 10000))
    log_dir = Path(tempfile.mkdtemp(prefix="bandwidth-cap-"))
    env = {**os.environ, "SWARMLLM_HOME": str(log_dir / "home"), "OMP_NUM_THREADS": "1"}
    boot = ManagedProcess("bootstrap", [sys.executable, "-m", "swarmllm.cli", "bootstrap", "--host", veth.host_ip,
                                        "--port", "31400"], log_dir / "bootstrap.log")
    boot.start(env)
    try:
        wait_ready([boot], 60)
        peers = [a for a in boot.ready["addresses"] if veth.host_ip in a]
        settings = [("uncapped", []), ("max-upload", ["--max-upload", f"{rate:.0f}"]),
                    ("max-download", ["--max-download", f"{rate:.0f}"])]
        if only != "all":
            settings = [settings[0], next(s for s in settings if s[0] == f"max-{only}")]
        runs = []
        for i, (name, caps) in enumerate(settings):
            run = run_once(veth, peers, log_dir, env, caps, seconds, sessions, idle_seconds if i == 0 else 0.0)
            run["name"] = name
            run["max_upload_bps"] = rate if name == "max-upload" else None
            run["max_download_bps"] = rate if name == "max-download" else None
            life = run["lifetime"]  # the node's whole life: wire bytes (veth) per stream byte (its own count)
            run["wire_per_payload"] = {
                "sent": life["wire_sent_bytes"] / max(life.get("payload_sent_bytes", 0), 1),
                "received": life["wire_received_bytes"] / max(life.get("payload_received_bytes", 0), 1)}
            runs.append(run)
        idle = runs[0].pop("idle")
        return {"rate_bps": rate, "seconds": seconds, "sessions": sessions, "model": MODEL, "runs": runs,
                "idle_dht_bps": {"sent": idle["sent"]["mean_bps"], "received": idle["received"]["mean_bps"]},
                "log_dir": str(log_dir)}
    finally:
        boot.stop()
        veth.close()


if __name__ == "__main__":
    main()
