"""The owner commands' printing: `swarmllm pair`, `unpair`, `trusted` (flags: cli_parser.py).

    swarmllm pair              show a pairing code and wait for a friend's machine to use it
    swarmllm pair CODE         use a friend's code: each side then trusts the other's owner
    swarmllm unpair OWNER_ID   stop trusting an owner (here; the other side keeps its own list)
    swarmllm trusted           the owners this machine trusts, and its own owner id

Kept beside cli.py rather than in it so the two grow apart cleanly; like cli.py, it parses
and prints only (the work is in owners.py and pairing.py). Errors a user can meet are
ValueErrors whose message is one sentence (cli.main prints them, exit code 2).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from typing import Sequence

from swarmllm.harness.processes import READY_MARKER


def initial_peers(args) -> list[str]:
    """Where `pair` joins the swarm. Only --initial-peers for now; other ways of finding the swarm
    (LAN discovery, invite tokens) plug in here."""
    return list(args.initial_peers or ())


def cmd_pair(args) -> int:
    from swarmllm.owners import TrustStore, owner_key
    from swarmllm.protocol.pairing import MAX_CODE_LIFETIME, new_code, normalize_code

    code = normalize_code(args.code) if args.code else None  # a typo is refused before joining anything
    if code is None and not 0 < args.timeout <= MAX_CODE_LIFETIME:
        raise ValueError(f"--timeout must be between 0 and {MAX_CODE_LIFETIME:.0f} seconds")
    peers = initial_peers(args)
    if not peers:
        raise ValueError("pass --initial-peers MADDR: both machines meet through the swarm to pair")
    owner = owner_key(args.owner_key)
    with TrustStore(owner) as trust:
        if code is None:
            result = asyncio.run(_wait(args, peers, owner, trust, new_code()))
        else:
            result = asyncio.run(_join(args, peers, owner, trust, code))
    other = result.other
    name = f"{other.owner_id} ({other.label})" if other.label else other.owner_id
    print(f"paired with {name}: servers it certifies now count as trusted here (`swarmllm unpair "
          f"{other.owner_id}` undoes it)", flush=True)
    if not result.confirmed:
        print("warning: the other machine did not confirm that it stored this pairing; if `swarmllm trusted` there "
              "does not list you, pair again", file=sys.stderr)
    return 0


async def _until_stopped(coro):
    """Run `coro`; SIGINT/SIGTERM cancel it (KeyboardInterrupt: exit code 130)."""
    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()
    stopped = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: (stopped.append(True), task.cancel()))
    try:
        return await task
    except asyncio.CancelledError:
        if stopped:
            raise KeyboardInterrupt from None
        raise


async def _wait(args, peers: Sequence[str], owner, trust, code: str):
    from swarmllm.pairing import wait_for_pair
    from swarmllm.swarm import SwarmNode, dht_time

    swarm = await SwarmNode.create(peers, host=args.host, port=args.port)
    try:
        def on_waiting(shown: str) -> None:
            print(f"pairing code: {shown}   (works once, for {args.timeout / 60:g} minutes)\n"
                  f"on the other machine, run:\n  swarmllm pair {shown} --initial-peers {','.join(peers)}\n"
                  "waiting...", flush=True)
            print(READY_MARKER + json.dumps({"role": "pair", "code": shown, "peer_id": swarm.peer_id,
                                             "owner_id": owner.owner_id}), flush=True)

        def on_failure(peer_id: str, reason: str, failures: int) -> None:
            print(f"a pairing attempt from peer {peer_id} failed: {reason} ({failures} of {args.attempts} "
                  "allowed)", file=sys.stderr, flush=True)

        return await _until_stopped(wait_for_pair(
            swarm, owner, trust, code, clock=dht_time, label=args.label, lifetime=args.timeout,
            max_failures=args.attempts, on_waiting=on_waiting, on_failure=on_failure))
    finally:
        await swarm.shutdown()


async def _join(args, peers: Sequence[str], owner, trust, code: str):
    from swarmllm.pairing import join_pair
    from swarmllm.swarm import SwarmNode, dht_time

    swarm = await SwarmNode.create(peers, client_mode=True)
    try:
        return await _until_stopped(join_pair(swarm, owner, trust, code, clock=dht_time, label=args.label,
                                                lookup_timeout=args.find_timeout))
    finally:
        await swarm.shutdown()


def cmd_unpair(args) -> int:
    from swarmllm.owners import TrustStore, owner_key

    with TrustStore(owner_key(args.owner_key)) as trust:
        revoked = trust.revoke(args.owner)
    name = f"{revoked.owner_id} ({revoked.label})" if revoked.label else revoked.owner_id
    print(f"{name} is no longer trusted here: servers it certifies count as public again. The other side keeps "
          "its own list; they can `swarmllm unpair` you there")
    return 0


def cmd_trusted(args) -> int:
    from swarmllm.owners import TrustStore, owner_key

    owner = owner_key(args.owner_key)
    with TrustStore(owner) as trust:
        entries = trust.entries() if args.all else trust.trusted_owners()
        problems = trust.problems()
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    if args.json:
        print(json.dumps({"owner_id": owner.owner_id, "trusted": [
            {"owner_id": e.owner_id, "owner_key": e.owner_key, "label": e.label, "added_at": e.added_at,
             "revoked_at": e.revoked_at} for e in entries]}, indent=2))
        return 0
    print(f"this machine's owner: {owner.owner_id}")
    if not entries:
        print("no trusted owners yet (`swarmllm pair` adds one)")
        return 0
    rows = [("OWNER", "LABEL", "ADDED", "STATUS")]
    rows += [(e.owner_id, e.label or "-", _clock(e.added_at), "revoked " + _clock(e.revoked_at) if e.revoked
              else "trusted") for e in entries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def _clock(unix: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(unix))


COMMANDS = {"pair": cmd_pair, "unpair": cmd_unpair, "trusted": cmd_trusted}
