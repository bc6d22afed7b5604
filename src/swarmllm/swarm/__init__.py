"""The P2P layer: DHT announce/lookup, peer identity, record validation and framed streams.

This package is the only place that imports hivemind (and zeroconf: LAN discovery, lan.py). Everything above it sees
`SwarmNode` (async), `FrameStream`, `BackgroundLoop` and `Identity`, so the transport could
be swapped without touching the server or the client.
"""

from swarmllm.swarm.identity import Identity, IdentityError, claim_identity, default_identity_path, load_or_create
from swarmllm.swarm.loop import BackgroundLoop
from swarmllm.swarm.reach import Reach
from swarmllm.swarm.node import FrameStream, StreamClosed, SwarmNode, SwarmUnreachableError, dht_time
from swarmllm.swarm.validation import trusted_release_signers

__all__ = ["BackgroundLoop", "FrameStream", "Identity", "IdentityError", "Reach", "StreamClosed", "SwarmNode",
           "SwarmUnreachableError", "claim_identity", "default_identity_path", "dht_time", "load_or_create",
           "trusted_release_signers"]
