"""A discrete-event simulator of a swarmllm swarm: what a swarm of any size would serve, with no network.

`swarmllm simulate SCENARIO.yaml` reads a scenario (scenario.py): a model's shape, a hardware mix
of volunteer machines with their memory, compute and bandwidth (hardware.py), where they and the
clients sit on the globe (network.py), how machines come and go (churn), and what the clients ask
for. It then plays the swarm forward in simulated time (events.py) and reports tokens/s per
session, time to first token, latency percentiles, aggregate throughput and coverage (report.py).

What it models is costs; what it decides with is the product's own code. Every decision a real
node or client makes is taken by the same pure function it calls:
- which blocks a joining node serves: server.partitioner.node_span_length + server.block_selection.choose_span;
- when a node moves: server.block_selection.plan_move (with planning_view / contested_by);
- which chain a session takes: client.routing.plan_chain, priced by client.estimates.SpeedEstimates
  (updated by `observe` from the step times the simulated client sees) and client.load.server_loads;
- when a step counts as lost: client.timeouts.StepTimeouts; the replacement: plan_chain over the
  failed span with the failed peer excluded; the replay: the committed positions recomputed there;
- which steps are re-checked: client.reputation.sample_probability, updated by verified / mismatched /
  banned, with routing_penalty feeding plan_chain;
- how many tokens a speculative round drafts: engine.speculative.DraftLength.
swarm.py holds the nodes (join, announce, leave, move), sessions.py the clients and their sessions.
Pure: no sockets, no threads, no clock; one seed gives one run.
"""

from swarmllm.sim.run import simulate  # noqa: F401
