"""Probes run inside a namespace of a `LanBridge` (lan_bridge.py) by tests and benchmarks; each
prints one JSON line and exits 0.

    python -m swarmllm.harness.lan_probe discover [--swarm NAME|--any] [--timeout S] [--settle S]
        {"seconds": from the start of discovery to its end (with --settle 0: to the first peer),
         "peers": [{peer_id, swarm_name, role, addresses, models}, ...], "addresses": [the swarm's]}
    python -m swarmllm.harness.lan_probe record --initial-peers MADDR --model ID --block N --peer ID
        {"found": whether PEER's record under block N was read through the swarm, "seconds": ...}

`record` joins the DHT as a client through --initial-peers and polls for up to --timeout s: it
shows that a node is in the swarm those peers belong to, not merely in a swarm.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import time


async def _discover(args) -> dict:
    from swarmllm.swarm.lan import discover_peers, swarm_addresses

    began = time.perf_counter()
    peers = await discover_peers(None if args.any else args.swarm, args.timeout, settle=args.settle)
    return {"seconds": time.perf_counter() - began, "peers": [dataclasses.asdict(p) for p in peers],
            "addresses": swarm_addresses(peers, args.swarm)}


async def _record(args) -> dict:
    from swarmllm.protocol import block_key
    from swarmllm.swarm import SwarmNode

    began = time.perf_counter()
    node = await SwarmNode.create(args.initial_peers.split(","), client_mode=True)
    try:
        while time.perf_counter() - began < args.timeout:
            found = await node.get_records([block_key(args.model, args.block)])
            if args.peer in found[block_key(args.model, args.block)]:
                return {"found": True, "seconds": time.perf_counter() - began}
            await asyncio.sleep(0.5)
        return {"found": False, "seconds": time.perf_counter() - began}
    finally:
        await node.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(prog="lan_probe")
    sub = parser.add_subparsers(dest="probe", required=True)
    p = sub.add_parser("discover")
    p.add_argument("--swarm", default="default")
    p.add_argument("--any", action="store_true", help="peers of every swarm; ends at the first of any")
    p.add_argument("--timeout", type=float, default=3.0)
    p.add_argument("--settle", type=float, default=0.5)
    p = sub.add_parser("record")
    p.add_argument("--initial-peers", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--block", type=int, default=0)
    p.add_argument("--peer", required=True)
    p.add_argument("--timeout", type=float, default=20.0)
    args = parser.parse_args()
    result = asyncio.run(_discover(args) if args.probe == "discover" else _record(args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
