"""Chaos run: generations keep going while nodes are killed, frozen, restarted and cut off.

A swarm of 6 nodes serves every block twice. While `--generations` greedy generations run
(`--concurrency` at a time), a fault driver repeatedly picks one of:
  kill     SIGKILL a node and its p2p daemon (a machine dies), restart it a few s later;
  stall    SIGSTOP a node for longer than a step timeout, then SIGCONT (a frozen machine);
  drop     cut one of the client's streams to a server (a dropped connection);
never taking down both servers of a span at once. It records every failover the clients
made, checks each output against a fault-free reference, checks that no node died of
another's failure and that surviving nodes freed their sessions, and writes JSON plus
`docs/reliability.md`.

    python benchmarks/chaos.py [--quick] [--out benchmarks/results] [--report docs/reliability.md]
    python benchmarks/chaos.py --ring --out /tmp/x --report /tmp/x/reliability.md   # ring decoding under faults
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from swarmllm.runtime import LocalModel
from swarmllm.client.ring import RingDecoder
from swarmllm.client.routing import usable
from swarmllm.client.swarm_client import SwarmClient
from swarmllm.engine.generation import generate
from swarmllm.engine.sampling import SamplingParams
from swarmllm.harness.local_swarm import LocalSwarm

MODEL = "smollm2-135m"
SPANS = [(0, 10), (10, 20), (20, 30), (0, 10), (10, 20), (20, 30)]
PROMPTS = ["Tell me about volcanoes.", "Write a limerick about a cat.", "What is photosynthesis?",
           "Give me a recipe for pancakes.", "Explain gravity to a child.", "Describe the city of Paris.",
           "What are prime numbers?", "Write a short note to a friend.", "Why do leaves change colour?",
           "How does a bicycle work?"]


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration):
        return float("nan")


class FaultDriver:
    def __init__(self, swarm: LocalSwarm, client: SwarmClient, sessions: dict, rng: random.Random):
        self.swarm, self.client, self.sessions, self.rng = swarm, client, sessions, rng
        self.down: dict[int, float] = {}      # node index -> when it may come back
        self.stalled: dict[int, float] = {}   # node index -> when to SIGCONT
        self.killed_by_us: set[int] = set()
        self.counts = {"kills": 0, "stalls": 0, "drops": 0, "restarts": 0}
        self.stop = threading.Event()

    def _healthy(self, index: int) -> bool:
        return index not in self.down and index not in self.stalled and self.swarm.nodes[index].alive

    def _spare(self, index: int) -> bool:
        """True if another healthy node serves the same span."""
        span = SPANS[index]
        return any(self._healthy(j) for j, s in enumerate(SPANS) if s == span and j != index)

    def run(self) -> None:
        while not self.stop.wait(self.rng.uniform(0.7, 2.0)):
            now = time.monotonic()
            for index, until in list(self.stalled.items()):
                if now >= until:
                    self.swarm.kill(self.swarm.nodes[index], signal.SIGCONT)
                    del self.stalled[index]
            for index, until in list(self.down.items()):
                if now >= until:
                    self.swarm.restart(self.swarm.nodes[index], wait=True)
                    self.counts["restarts"] += 1
                    del self.down[index]
            action = self.rng.choice(["kill", "stall", "drop"])
            candidates = [i for i in range(len(SPANS)) if self._healthy(i) and self._spare(i)]
            if action == "drop":
                self._drop()
            elif candidates:
                # Prefer servers that active sessions are using right now: that is where it hurts.
                in_use = {link.peer_id for s in list(self.sessions.values()) if s is not None for link in s.chain}
                busy = [i for i in candidates if (self.swarm.nodes[i].ready or {}).get("peer_id") in in_use]
                index = self.rng.choice(busy or candidates)
                node = self.swarm.nodes[index]
                if action == "kill":
                    self.swarm.kill(node, signal.SIGKILL)
                    self.killed_by_us.add(index)
                    self.down[index] = now + self.rng.uniform(2.0, 4.0)
                    self.counts["kills"] += 1
                else:
                    self.swarm.kill(node, signal.SIGSTOP)
                    self.stalled[index] = now + self.rng.uniform(6.0, 8.0)  # past the 5 s step timeout
                    self.counts["stalls"] += 1
        for index in list(self.stalled):  # leave everything running
            self.swarm.kill(self.swarm.nodes[index], signal.SIGCONT)
        self.stalled.clear()

    def _drop(self) -> None:
        live = [s for s in list(self.sessions.values()) if s is not None]
        if not live:
            return
        session = self.rng.choice(live)._session
        hop = self.rng.choice(session.hops)
        if hop.stream is not None:
            self.client.loop.loop.call_soon_threadsafe(hop.stream.close)
            self.counts["drops"] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small setting for CI (12 shorter generations)")
    parser.add_argument("--generations", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--report", default=str(Path(__file__).parents[1] / "docs" / "reliability.md"))
    parser.add_argument("--ring", action="store_true", help="generate with ring decoding (client/ring.py)")
    args = parser.parse_args()
    generations = args.generations or (12 if args.quick else 40)
    new_tokens = 16 if args.quick else 32
    params = SamplingParams(max_new_tokens=new_tokens)
    rng = random.Random(args.seed)

    model = LocalModel.load(MODEL)
    jobs = [PROMPTS[i % len(PROMPTS)] for i in range(generations)]
    references = {}
    for prompt in set(jobs):
        ids = model.prompt_ids(prompt)
        forward = model.new_forward_fn(len(ids) + new_tokens)
        references[prompt] = generate(model.head, model.tokenizer, forward, ids, params).token_ids

    swarm = LocalSwarm(MODEL, SPANS, log_dir=Path(tempfile.mkdtemp(prefix="swarmllm-chaos-")))
    swarm.start(timeout=300)
    started = time.monotonic()
    results, sessions = [], {}
    try:
        with SwarmClient.connect(swarm.initial_peers) as client:
            baseline_rss = {i: rss_mb(n.process.pid) for i, n in enumerate(swarm.nodes)}
            driver = FaultDriver(swarm, client, sessions, rng)
            fault_thread = threading.Thread(target=driver.run, daemon=True)
            fault_thread.start()

            def one(job: int) -> dict:
                prompt = jobs[job]
                ids = model.prompt_ids(prompt)
                t0 = time.monotonic()
                try:
                    session = client.open_session(model.source.model_id, model.config.n_blocks, len(ids) + new_tokens)
                    sessions[job] = session
                    try:
                        decoder = RingDecoder(client.loop.run, session.session, model.tokenizer.eos_token_ids) \
                            if args.ring else None
                        out = generate(model.head, model.tokenizer, session.forward, ids, params, None, decoder)
                    finally:
                        sessions[job] = None
                        session.close()
                    return {"job": job, "ok": True, "equal": out.token_ids == references[prompt],
                            "tokens": len(out.token_ids), "seconds": time.monotonic() - t0,
                            "failovers": [vars(f) for f in session.failovers]}
                except Exception as e:  # recorded, and fails the run
                    view = sorted((r.start, r.end, r.state.value, r.peer_id[-8:]) for r in client.recent_records(MODEL, 15.0))
                    return {"job": job, "ok": False, "equal": False, "error": f"{type(e).__name__}: {e}",
                            "at": t0 - started, "seconds": time.monotonic() - t0, "failovers": [],
                            "client_view": view, "banned": sorted(p[-8:] for p in client.banned())}

            with ThreadPoolExecutor(args.concurrency) as pool:
                results = list(pool.map(one, range(generations)))
            driver.stop.set()
            fault_thread.join(60)
            for index, until in list(driver.down.items()):  # bring everyone back for the checks
                swarm.restart(swarm.nodes[index])
            for _ in range(30):  # records refresh every 5 s: wait until they show every session closed
                records = {r.peer_id: r for r in client.find_servers(MODEL, 30)}
                if sum(r.active_sessions for r in records.values() if usable(r)) == 0:
                    break
                time.sleep(1)
            surviving = [i for i in range(len(SPANS)) if i not in driver.killed_by_us]
            crashed = [swarm.nodes[i].name for i in surviving if not swarm.nodes[i].alive]
            memory = {swarm.nodes[i].name: {"start_mb": baseline_rss[i], "end_mb": rss_mb(swarm.nodes[i].process.pid)}
                      for i in surviving if swarm.nodes[i].alive}
            open_sessions = sum(r.active_sessions for r in records.values() if usable(r))
            open_by = {r.peer_id[-8:]: r.active_sessions for r in records.values() if usable(r) and r.active_sessions}
    finally:
        swarm.stop()

    failovers = [f for r in results for f in r["failovers"]]
    recovery = sorted(f["seconds"] for f in failovers)
    by_code: dict[str, int] = {}
    for f in failovers:
        by_code[f["code"]] = by_code.get(f["code"], 0) + 1

    def pct(values, q):
        return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else None

    report = {
        "benchmark": "chaos", "quick": args.quick, "seed": args.seed, "nodes": len(SPANS),
        "generations": generations, "concurrency": args.concurrency, "new_tokens": new_tokens, "ring": args.ring,
        "wall_seconds": time.monotonic() - started, "faults": driver.counts,
        "completed": sum(r["ok"] for r in results), "equal_to_fault_free": sum(r["equal"] for r in results),
        "errors": [r["error"] for r in results if not r["ok"]],
        "failed_jobs": [r for r in results if not r["ok"]],  # with the client's view of the swarm then
        "failovers": len(failovers), "failovers_by_cause": by_code,
        "recovery_seconds": {"p50": pct(recovery, 0.5), "p95": pct(recovery, 0.95), "max": recovery[-1] if recovery else None},
        "recovery_after_kill_like_faults_p95": pct(sorted(f["seconds"] for f in failovers if f["code"] != "timeout"), 0.95),
        "tokens_lost": sum(new_tokens - r.get("tokens", 0) for r in results if not r["ok"]),
        "slow_failovers": [f for f in failovers if f["seconds"] >= 3.0],  # for whoever works on the tail
        "nodes_crashed_by_others": crashed, "node_memory": memory, "sessions_left_open": open_sessions,
        "sessions_left_open_by_node": open_by,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "chaos.json").write_text(json.dumps(report, indent=2))
    if args.report:
        Path(args.report).write_text(render(report))
    print(json.dumps({k: v for k, v in report.items() if k != "node_memory"}, indent=2))
    ok = (report["completed"] == generations and report["equal_to_fault_free"] == generations and not crashed
          and open_sessions == 0)
    sys.exit(0 if ok else 1)


def render(r: dict) -> str:
    rec = r["recovery_seconds"]
    fmt = lambda x: "n/a" if x is None else f"{x:.2f} s"  # noqa: E731
    growth = [m["end_mb"] - m["start_mb"] for m in r["node_memory"].values()]
    return f"""# Reliability report

Generated by `python benchmarks/chaos.py{' --quick' if r['quick'] else ''}` (seed {r['seed']}) from
`benchmarks/results/chaos.json`. A swarm of {r['nodes']} nodes on loopback serves every block of
smollm2-135m twice; {r['generations']} greedy generations of {r['new_tokens']} tokens ran, {r['concurrency']} at a
time, while a driver killed (SIGKILL, node and p2p daemon), froze (SIGSTOP for 6-8 s, past the
step timeout), restarted nodes and cut client streams, never taking down both servers of a span.

| measure | value |
|---|---|
| generations completed | {r['completed']} / {r['generations']} |
| outputs equal to the fault-free reference | {r['equal_to_fault_free']} / {r['generations']} |
| faults injected | {r['faults']['kills']} kills, {r['faults']['stalls']} stalls, {r['faults']['drops']} dropped streams, {r['faults']['restarts']} restarts |
| failovers performed by clients | {r['failovers']} ({', '.join(f'{k}: {v}' for k, v in sorted(r['failovers_by_cause'].items())) or 'none'}) |
| recovery time per failover, p50 / p95 / max | {fmt(rec['p50'])} / {fmt(rec['p95'])} / {fmt(rec['max'])} |
| recovery p95 for kills and drops (not timeouts) | {fmt(r['recovery_after_kill_like_faults_p95'])} (target < 3 s) |
| tokens lost | {r['tokens_lost']} |
| nodes that crashed because another failed | {len(r['nodes_crashed_by_others'])} |
| sessions still open on nodes afterwards | {r['sessions_left_open']} |
| RSS growth of surviving nodes over the run | max {max(growth) if growth else 0:.0f} MB |
| wall time | {r['wall_seconds']:.0f} s |

Recovery time is measured by the client from the failed step to the retried step's
result: finding the failed server (immediate for a lost stream; a ping round for a
timeout), planning a replacement for exactly its blocks, opening a session there, replaying
the committed positions in their original chunks, and re-running the step. Stalls cost the step
timeout on top (adaptive, about 1.5 s here), by design: a frozen node is indistinguishable
from a slow one until then. A failover is counted under the cause of its first fault; a
second fault during the same recovery (another node killed meanwhile) adds to its time.

## What was learned

- A batch of T positions does not round like T single positions (seen here in bf16), so a
  replacement server must replay the session in its original chunks; replaying all
  positions in one batch changed greedy output a few tokens after a failover.
- A node killed together with its p2p daemon is noticed by the client within ~10 ms (the
  stream resets); a frozen one only by the step timeout, which dominates the p95.
- Restarted nodes come back with the same peer id (persistent identities), so a client that
  banned one while it was down keeps avoiding it while others cover its span: a banned peer
  that recovers is retried after 2 s, doubling up to 60 s, and at once when only it covers a gap.
- Re-planning from a DHT lookup while peers die is slow (RPCs to dead peers wait for their
  timeout) and can come back incomplete; clients now re-plan from the records they saw in
  the last 15 s (kept fresh by a background refresh) and ping to weed out the dead.
- DHT lookups under churn are unreliable on their own: a lookup that touches a frozen peer
  waits out the 3 s RPC timeout, and for seconds at a time lookups came back empty or with
  half the servers. Clients now keep every record seen in the last 120 s, refresh them in
  the background with overlapping lookups (kicked at once when a plan finds blocks missing),
  and re-validate known servers by a direct ping whose pong says what they serve now.
  Before that, 1-6 of 40 generations failed to find any server for a span that had one.
- The step timeout adapts: 8x the session's measured decode step (at least 1.5 s, at most
  the old fixed 5 s), doubling after a timeout that turns out to be a load spike; a frozen
  server is now noticed in about a second plus a 1 s ping.
- A dropped stream or a timeout must not rule out a server that still answers a ping:
  excluding the only live replica of a span made failover wait for a restart, and 1-3 of 40
  generations failed that way before every hop was pinged on each failure.
{open_problems(r)}"""


def open_problems(r: dict) -> str:
    lines = ["", "## Open problems in this run", ""]
    errors = sorted(set(e.split(" of smollm2")[0] for e in r["errors"]))
    if errors:
        lines.append(f"{len(r['errors'])} generation(s) failed; distinct causes:")
        lines += [f"- `{e[:160]}`" for e in errors]
        lines.append("")
        lines.append("These are clients that could not find a live server for some blocks for longer than they "
                     "wait (6 s at session open, 30 s in failover) although the driver kept one replica of every "
                     "span up; `failed_jobs` in the JSON holds each client's view of the swarm at that moment.")
    p95 = r["recovery_after_kill_like_faults_p95"]
    if p95 is not None and p95 >= 3:
        lines.append(f"Recovery p95 after kills and drops is {p95:.1f} s, above the 3 s target: the slow tail "
                     "is failovers that had to wait for a replacement to be found or to (re)start.")
    if len(lines) == 3:
        lines.append("None: every generation completed with the fault-free output and the recovery target was met.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
