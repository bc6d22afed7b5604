"""swarmllm: SETI@home for large language models.

Volunteer nodes each host a contiguous span of a published model's transformer blocks;
clients find them through a DHT and generate text through the chain of nodes.

Layering (imports point one way; see docs/architecture.md):
    protocol  <- everything            (wire messages, DHT records, errors; no logic)
    models, weights, engine            (pure compute and file reading; no network)
    swarm                              (the only place hivemind is imported)
    server, client                     (meet only in protocol)
    gateway, cli                       (entry points)
"""

__version__ = "0.1.0"
