"""`swarmllm simulate SCENARIO.yaml`: play a swarm forward in simulated time (swarmllm.sim)."""

from __future__ import annotations

import json
import sys


def cmd_simulate(args) -> int:
    # Imported here: the simulator pulls in the protocol (and torch), which other commands' start-up must not pay.
    from swarmllm.sim import simulate
    from swarmllm.sim.report import text
    from swarmllm.sim.scenario import ScenarioError, load

    try:
        scenario = load(args.scenario)
    except (OSError, ScenarioError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.seed is not None:
        scenario.seed = args.seed
    if args.duration is not None:
        scenario.duration_s = args.duration
    result = simulate(scenario)
    print(json.dumps(result, indent=2) if args.json else text(result))
    return 0
