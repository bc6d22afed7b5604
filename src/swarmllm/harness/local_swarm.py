"""Start a whole swarm on this machine: a bootstrap peer and N node processes.

Used by `swarmllm up`, by the integration-test fixtures and by the benchmarks, so all three
exercise the same real processes talking over the real P2P stack. Each process writes its
output to a log file; readiness is read from the `READY_MARKER` line each process prints.

With `network` set (a netem profile name such as "continent", "mixed", or one name per node
separated by commas), every node gets a delaying relay process in front of its port and
announces the relay's address, so clients and other nodes reach it over an emulated WAN
link (see netem.py). The bootstrap peer stays direct.

Every process it starts dies with the process that started it, however that one ends
(processes.py); `stop()` stops them all at once and SIGKILLs what is left after a deadline.

With `lan` False (the default) none of its processes looks for a swarm on the local network or
advertises one there (`--no-lan`): tests and benchmarks stay among themselves. With `lan` True
(`swarmllm up`) the bootstrap starts a new swarm without looking (`--lan-timeout 0`) and it and
the nodes advertise themselves by mDNS, so that `swarmllm serve` on another machine joins them
(they should then listen on a LAN interface: `host="0.0.0.0"`).

Each bootstrap and node runs with the identity `identity_dir/<name>.key` (default: the log
folder's `identities/`), so a node restarted by `restart()`, or started again under the same
name, keeps its peer id; `swarmllm up` points it at the state folder to keep them across runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from swarmllm.harness.netem import LinkProfile, node_profiles
from swarmllm.harness.processes import READY_MARKER, ManagedProcess


class LocalSwarmError(RuntimeError):
    """A process of the swarm exited or was not ready in time; `process` is the one."""

    def __init__(self, message: str, process: Optional[ManagedProcess] = None):
        super().__init__(message)
        self.process = process


@dataclass
class LocalSwarm:
    model: str
    spans: Sequence[tuple[int, int]]
    host: str = "127.0.0.1"
    node_args: Sequence[str] = ()
    log_dir: Optional[Path] = None
    env: dict = field(default_factory=dict)
    network: Optional[str] = None  # WAN emulation per node: a netem profile, "mixed" or "name,name,..."
    identity_dir: Optional[Path] = None  # <name>.key per process (default: log_dir / "identities")
    lan: bool = False  # advertise the bootstrap and nodes on the local network (mDNS); False: --no-lan
    bootstrap: Optional[ManagedProcess] = None
    nodes: list[ManagedProcess] = field(default_factory=list)
    gateways: list[ManagedProcess] = field(default_factory=list)
    relays: dict[str, ManagedProcess] = field(default_factory=dict)  # node name -> its netem relay
    profiles: dict[str, LinkProfile] = field(default_factory=dict)   # node name -> its link profile

    @property
    def initial_peers(self) -> list[str]:
        if self.bootstrap is None or self.bootstrap.ready is None:
            raise LocalSwarmError("the bootstrap peer is not running")
        return self.bootstrap.ready["addresses"]

    def _env(self) -> dict:
        env = dict(os.environ)
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads must not spin on shared cores
        env.update(self.env)
        return env

    def start(self, timeout: float = 120.0) -> "LocalSwarm":
        self.log_dir = Path(self.log_dir or tempfile.mkdtemp(prefix="swarmllm-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.identity_dir = Path(self.identity_dir or self.log_dir / "identities")
        cli = [sys.executable, "-m", "swarmllm.cli"]
        self.bootstrap = ManagedProcess("bootstrap", cli + ["bootstrap", "--host", self.host, "--port", "0",
                                                            *self.lan_args(lan_timeout="0"),
                                                            *self.identity_args("bootstrap")],
                                        self.log_dir / "bootstrap.log")
        self.bootstrap.start(self._env())
        self._wait([self.bootstrap], timeout)
        for i, (start, end) in enumerate(self.spans):
            self.add_node(start, end, name=f"node{i}")
        self._wait(self.nodes, timeout)
        return self

    def add_node(self, start: Optional[int], end: Optional[int], name: Optional[str] = None,
                 extra_args: Sequence[str] = (), program: Sequence[str] = (),
                 auto_model: bool = False) -> ManagedProcess:
        """Start one more node; with start=end=None it chooses its own blocks from the DHT.

        program: the command that takes `serve`'s arguments (default `python -m swarmllm.cli`);
        tests run hostile nodes this way (a script that wraps the CLI and misbehaves). auto_model: no
        --model, the node chooses one by the swarm's demand."""
        cli = list(program) or [sys.executable, "-m", "swarmllm.cli"]
        name = name or f"node{len(self.nodes)}"
        blocks = [] if start is None else ["--blocks", f"{start}:{end}"]
        if self.network:
            blocks += self._start_relay(name, node_profiles(self.network, len(self.nodes) + 1)[-1])
        if "--num-threads" not in (*self.node_args, *extra_args):
            # Nodes on one machine share its cores: more torch threads than cores per node only
            # adds synchronisation stalls (measured: 1 thread runs 10 blocks as fast as 2 here).
            share = max(1, (os.cpu_count() or 1) // max(1, len(self.spans)))
            blocks += ["--num-threads", str(share)]
        if "--identity" not in (*self.node_args, *extra_args):
            blocks += self.identity_args(name)
        blocks += self.lan_args()
        model = [] if auto_model else ["--model", self.model]
        node = ManagedProcess(name, cli + ["serve", *model, "--initial-peers", ",".join(self.initial_peers),
                                           *blocks, "--host", self.host, *self.node_args, *extra_args],
                              self.log_dir / f"{name}.log")
        node.start(self._env())
        self.nodes.append(node)
        return node

    def identity_path(self, name: str) -> Path:
        """The identity file of the process called `name` (it exists once that process has started)."""
        return Path(self.identity_dir or Path(self.log_dir) / "identities") / f"{name}.key"

    def lan_args(self, lan_timeout: Optional[str] = None) -> list[str]:
        """How a bootstrap or node of this swarm treats the LAN (see the module docstring)."""
        if not self.lan:
            return ["--no-lan"]
        return ["--lan-timeout", lan_timeout] if lan_timeout is not None else []

    def identity_args(self, name: str) -> list[str]:
        return ["--identity", str(self.identity_path(name))]

    def _start_relay(self, name: str, profile: LinkProfile) -> list[str]:
        """Start the node's relay; returns the node arguments that put the node behind it."""
        node_port, relay_port = free_port(self.host), free_port(self.host)
        visible_host = "127.0.0.1" if self.host == "0.0.0.0" else self.host
        relay = ManagedProcess(f"{name}-relay", [sys.executable, "-m", "swarmllm.harness.netem", "--listen",
                                                 f"{self.host}:{relay_port}", "--target",
                                                 f"{visible_host}:{node_port}", "--profile", profile.name],
                               self.log_dir / f"{name}-relay.log")
        relay.start(self._env())
        self._wait([relay], 30)
        self.relays[name], self.profiles[name] = relay, profile
        return ["--port", str(node_port), "--announce", f"/ip4/{visible_host}/tcp/{relay_port}"]

    def add_gateway(self, port: int, extra_args: Sequence[str] = (), name: str = "gateway") -> ManagedProcess:
        """Start an OpenAI-compatible gateway in front of this swarm."""
        gateway = ManagedProcess(name, [sys.executable, "-m", "swarmllm.cli", "gateway", "--initial-peers",
                                        ",".join(self.initial_peers), "--host", self.host, "--port", str(port),
                                        *extra_args], self.log_dir / f"{name}.log")
        gateway.start(self._env())
        self.gateways.append(gateway)
        return gateway

    def restart(self, proc: ManagedProcess, wait: bool = True, timeout: float = 120.0) -> ManagedProcess:
        """Start a stopped or killed process again with the same arguments: a node or bootstrap keeps its
        identity, so its peer id (and the bootstrap's multiaddr)."""
        proc.stop()
        proc.start(self._env())
        if wait:
            self._wait([proc], timeout)
        return proc

    def kill(self, proc: ManagedProcess, sig: int = signal.SIGKILL) -> None:
        """Signal the process and its p2p daemon together, as when a machine dies or freezes."""
        if proc.alive:
            os.killpg(proc.process.pid, sig)
            if sig == signal.SIGKILL:
                proc.process.wait(10)

    def wait_ready(self, processes: Sequence[ManagedProcess], timeout: float = 120.0) -> None:
        self._wait(processes, timeout)

    def _wait(self, processes: Sequence[ManagedProcess], timeout: float) -> None:
        wait_ready(processes, timeout)

    def stop(self, timeout: float = 12.0) -> None:
        """Stop every process at once (each shuts down in a bounded time: a node announces
        LEAVING and drains, see server/node.py); SIGKILL the process groups of those still
        running after `timeout` s."""
        procs = [p for p in self.gateways + self.nodes + list(self.relays.values()) + [self.bootstrap]
                 if p is not None and p.alive]
        for proc in procs:
            proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in procs:
            proc.finish(deadline)

    def __enter__(self) -> "LocalSwarm":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_ready(processes: Sequence[ManagedProcess], timeout: float = 120.0) -> None:
    """Until every process has printed its ready line; LocalSwarmError (with its log's tail) if one exits
    first or `timeout` s pass."""
    deadline = time.monotonic() + timeout
    pending = list(processes)
    while pending:
        for proc in list(pending):
            if proc.poll_ready() is not None:
                pending.remove(proc)
            elif not proc.alive:
                raise LocalSwarmError(f"{proc.name} exited before it was ready:\n{proc.log_tail()}", proc)
        if pending and time.monotonic() > deadline:
            late = pending[0]
            raise LocalSwarmError(f"{late.name} was not ready after {timeout:.0f} s:\n{late.log_tail()}", late)
        time.sleep(0.1)


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def even_spans(n_blocks: int, n_nodes: int) -> list[tuple[int, int]]:
    """Split [0, n_blocks) into n_nodes contiguous spans of near-equal length."""
    bounds = [round(i * n_blocks / n_nodes) for i in range(n_nodes + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(n_nodes)]
