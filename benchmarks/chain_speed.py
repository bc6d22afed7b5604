"""Decode tok/s through a 3-node chain of this checkout: `swarmllm generate --json`, 64 tokens greedy, plain and ring."""
import json, subprocess, sys
from swarmllm.harness.local_swarm import LocalSwarm, even_spans
swarm = LocalSwarm("smollm2-135m", even_spans(30, 3)).start(timeout=180)
out_rates = {"plain": [], "ring": []}
try:
    peers = ",".join(swarm.initial_peers)
    for _ in range(3):
        for mode, flag in (("plain", "--no-ring"), ("ring", "--ring")):
            out = subprocess.run([sys.executable, "-m", "swarmllm.cli", "generate", "--initial-peers", peers,
                                  "--max-new-tokens", "64", "--json", flag, "Write a short story about a robot."],
                                 capture_output=True, text=True, timeout=300)
            if out.returncode:
                print(out.stderr[-2000:]); continue
            out_rates[mode].append(round(json.loads(out.stdout)["timings"]["decode_tokens_per_s"], 1))
finally:
    swarm.stop()
print(json.dumps(out_rates))
