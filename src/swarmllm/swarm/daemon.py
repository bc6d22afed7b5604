"""The p2pd daemon under each `SwarmNode`: its lifetime tied to its owner's, its errors in words.

hivemind's `P2P.create` spawns the Go daemon `p2pd` as a child process and stops it in
`P2P.shutdown()`; if the Python process is killed (SIGKILL, a crash, an OOM kill) nothing
stops it, and it keeps its port. What this module promises:

- `install_spawn_hook()` (run on import): a p2pd spawned through hivemind gets SIGTERM when
  the thread that started it dies, i.e. with its node (Linux, prctl PR_SET_PDEATHSIG; see
  lifeline.py). It wraps `asyncio.subprocess.create_subprocess_exec` and changes only calls
  whose program is hivemind's p2pd binary. Elsewhere p2pd still stops on a clean shutdown.
  p2pd is forked by the thread that runs its event loop, which lives as long as the daemon.
- `stop_daemon(p2p, timeout)`: stop it, SIGKILLing it if it has not exited in `timeout` s.
- `explain_daemon_error(text, ...)`: p2pd's error text (raw log lines, Go timestamps, dial
  reports listing every address tried) rewritten as one sentence that says what to do, for
  the errors people meet: a port in use, a malformed multiaddr, peers that refuse, have no
  route, time out, do not speak libp2p or lack a protocol. Unknown errors keep their text,
  without the timestamps and log noise.
"""

from __future__ import annotations

import asyncio
import asyncio.subprocess
import logging
import os
import re
import signal
from typing import Sequence

import hivemind.hivemind_cli as hivemind_cli
from hivemind.p2p import P2P
from hivemind.p2p.p2p_daemon import P2PD_FILENAME

from swarmllm.lifeline import die_with_parent

logger = logging.getLogger(__name__)

P2PD_PATH = os.path.realpath(os.path.join(os.path.dirname(hivemind_cli.__file__), P2PD_FILENAME))


def install_spawn_hook() -> None:
    original = asyncio.subprocess.create_subprocess_exec
    if getattr(original, "swarmllm_hook", False):
        return

    async def create_subprocess_exec(program, *args, **kwargs):
        if "preexec_fn" not in kwargs and os.path.realpath(str(program)) == P2PD_PATH:
            preexec = die_with_parent(signal.SIGTERM, any_thread=True)
            if preexec is not None:
                kwargs["preexec_fn"] = preexec
        return await original(program, *args, **kwargs)

    create_subprocess_exec.swarmllm_hook = True
    asyncio.subprocess.create_subprocess_exec = create_subprocess_exec


async def stop_daemon(p2p: P2P, timeout: float) -> None:
    """p2p.shutdown() (SIGTERM to p2pd and wait), at most `timeout` s, then SIGKILL."""
    try:
        await asyncio.wait_for(p2p.shutdown(), timeout)
    except asyncio.TimeoutError:
        child = getattr(p2p, "_child", None)  # hivemind's handle on the daemon process
        if child is not None and child.returncode is None:
            logger.warning("p2pd did not exit %.1f s after SIGTERM; killing it", timeout)
            child.kill()
            await asyncio.wait_for(child.wait(), 5)


# --- error messages ---------------------------------------------------------------------
_NOISE = [
    re.compile(r"\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2}(\.\d+)?\s*"),  # Go's log timestamp
    re.compile(r"^\s*\{.*\}\s*$", re.MULTILINE),                     # a JSON log line
    re.compile(r"(Daemon failed to start|Connect failed\.|Failed to start p2pd daemon)\s*:?\s*(msg=)?"),
]
_DIAL_LINE = re.compile(r"^\s*\*\s*\[([^\]]*)\]\s*(.+)$", re.MULTILINE)  # "  * [/ip4/...] reason"

# (pattern, sentence). Sentences are str.format templates over: the pattern's named groups,
# port, peers (the initial peers), who ("peer <id>"), handler, at (" at <address>" or "").
_RULES: list[tuple[re.Pattern, str]] = [(re.compile(p, re.IGNORECASE), s) for p, s in [
    (r"listen tcp\d? \[?(?P<host>[^\]\s]*?)\]?:(?P<inuse>\d+): bind: address already in use",
     "port {inuse} on {host} is already in use; stop whatever holds it or pass another --port"),
    (r"address already in use", "port {port} is already in use; stop whatever holds it or pass another --port"),
    (r"invalid p2p multiaddr",
     "an initial peer's multiaddr lacks its /p2p/<peer id> part ({peers}); pass the whole address the "
     "bootstrap peer printed, /ip4/HOST/tcp/PORT/p2p/PEER_ID"),
    (r'failed to parse multiaddr "(?P<addr>[^"]*)"',
     "\"{addr}\" is not a valid multiaddr; addresses look like /ip4/HOST/tcp/PORT/p2p/PEER_ID, exactly as "
     "the bootstrap peer printed them"),
    (r"failed to connect to bootstrap peers",
     "could not join the swarm through {peers}: none of them answered. Check that the bootstrap peer is "
     "running, that this machine can reach it, and that the multiaddr (including /p2p/<peer id>) is exactly "
     "what it printed"),
    (r"Daemon failed to start in (?P<seconds>[\d.]+) seconds",
     "the p2p daemon (p2pd) did not start within {seconds} s; the machine may be overloaded: try again"),
    (r"protocols? not supported",
     "{who} does not serve {handler}: it is not a swarmllm node or runs an incompatible version"),
    (r"routing: not found",
     "{who} is not known to this node or the DHT: it has left the swarm, or its record is stale"),
    (r"peer id mismatch",
     "the peer{at} has another peer id than its multiaddr says; copy the address again from that peer's "
     "output (its id changes at each restart unless it runs with --identity)"),
    (r"connection refused",
     "{who} refused the connection{at}: nothing listens there any more, it has probably stopped"),
    (r"no route to host|network is unreachable",
     "there is no network route to {who}{at}: check the address it announces, firewalls and NAT"),
    (r"context deadline exceeded|i/o timeout|timed? ?out",
     "{who} did not answer in time{at}: it may be overloaded, frozen, or behind a firewall that drops "
     "packets"),
    (r"failed to negotiate security protocol",
     "the peer{at} does not speak libp2p: something other than a swarmllm peer listens there"),
    (r"dial backoff",
     "{who} failed to answer moments ago and is not dialled again yet; retry in a few seconds"),
]]


def daemon_detail(text: str) -> str:
    """p2pd's error text without timestamps, JSON log lines and hivemind's wrapper prefixes."""
    for pattern in _NOISE:
        text = pattern.sub("", text)
    return " ".join(text.split())


def explain_daemon_error(text: str, *, initial_peers: Sequence[str] = (), port: int = 0,
                         peer: str = "", handler: str = "") -> str:
    """One sentence for a p2pd error; `peer`/`handler` for errors opening a stream to a peer."""
    dials = _DIAL_LINE.findall(text)
    # A dial report lists every address tried; the first failure that is not a back-off says most.
    useful = [(addr, reason) for addr, reason in dials if "dial backoff" not in reason] or dials
    addr, reason = useful[0] if useful else ("", text)
    context = {"port": port, "peers": ", ".join(initial_peers) or "no initial peers",
               "who": f"peer {peer}" if peer else "the peer", "handler": handler or "the requested protocol",
               "at": f" at {addr}" if addr else ""}
    for candidate in (reason, text):
        for pattern, sentence in _RULES:
            match = pattern.search(candidate)
            if match:
                return sentence.format(**context, **{k: v for k, v in match.groupdict().items() if v is not None})
    detail = daemon_detail(text)
    if peer:
        return f"could not open a stream to peer {peer}: {detail}"
    if initial_peers:
        return (f"could not join the swarm through {context['peers']}: {detail}. Check that the bootstrap peer is "
                "running and the multiaddr is exactly what it printed")
    return f"the p2p daemon failed: {detail}"


install_spawn_hook()
