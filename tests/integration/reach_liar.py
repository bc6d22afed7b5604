"""A test-only peer that answers every reachability probe with the same lie, dialling nobody.

Imported by test_reach_probe.py (loopback) and run as a process inside a NAT lab namespace by
test_nat.py: `python reach_liar.py --host IP --initial-peers ADDR --answer yes|no` prints the harness's
ready line (READY_MARKER + {"peer_id", "addresses"}) once it listens, then waits to be killed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Sequence

from swarmllm.harness.processes import READY_MARKER
from swarmllm.swarm import SwarmNode, reach


async def start_liar(initial_peers: Sequence[str], answer: bool, host: str = "127.0.0.1") -> SwarmNode:
    """A public swarm node whose probe handler is replaced by one that always says `answer`."""
    node = await SwarmNode.create(list(initial_peers), host=host, reach=reach.Reach(reachability="public"))

    async def on_probe(stream) -> None:
        await stream.recv()
        await stream.send(reach.probe_reply(answer, "/ip4/127.0.0.1/tcp/1"))

    await node.remove_stream_handler(reach.REACH_HANDLER)
    await node.add_stream_handler(reach.REACH_HANDLER, on_probe)
    return node


async def _main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--initial-peers", default="")
    parser.add_argument("--answer", choices=("yes", "no"), required=True)
    args = parser.parse_args(argv)
    node = await start_liar([p for p in args.initial_peers.split(",") if p], args.answer == "yes", args.host)
    addresses = [a for a in await node.visible_addresses() if "/p2p/" in a]
    print(READY_MARKER + json.dumps({"peer_id": node.peer_id, "addresses": addresses}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1:]))
