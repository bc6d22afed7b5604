"""The P2P layer: DHT announce/lookup, peer identity and framed streams.

This package is the only place that imports hivemind. Everything above it sees
`SwarmNode` (async), `FrameStream` and `BackgroundLoop`, so the transport could be
swapped without touching the server or the client.
"""

from swarmllm.swarm.loop import BackgroundLoop
from swarmllm.swarm.node import FrameStream, StreamClosed, SwarmNode, SwarmUnreachableError, dht_time

__all__ = ["BackgroundLoop", "FrameStream", "StreamClosed", "SwarmNode", "SwarmUnreachableError", "dht_time"]
