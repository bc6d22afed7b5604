"""A swarm node: hosts a contiguous span of a model's blocks and serves inference sessions.

`node.py` runs the lifecycle (load span, measure, join, announce, serve, leave);
`sessions.py` owns KV-cache memory and session bookkeeping; `handlers.py` turns wire
messages into compute and pushes results down the chain; `backend.py` adapts the engine.
"""
