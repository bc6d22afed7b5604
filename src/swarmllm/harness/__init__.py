"""The development swarm harness: whole swarms of real processes on one machine.

- `local_swarm.LocalSwarm`: a bootstrap peer, N `swarmllm serve` nodes and gateways as child
  processes (what `swarmllm up`, the integration tests and the benchmarks start);
- `netem`: delaying, rate-limiting TCP relays in front of nodes (an emulated WAN);
- `delayed.DelayedSwarm`: the same delays on the client's own streams (a distant client);
- `processes`: child processes and their readiness line (they die with their parent, see
  swarmllm/lifeline.py);
- `supervise.Supervisor`: `swarmllm up`'s life of a local swarm (port check, start, watch,
  stop on SIGINT / SIGTERM / SIGHUP).

Nothing here is used by a node or a client in production; it only starts and watches them.
"""
