"""`swarmllm up`'s supervisor: check, start, watch and stop a local swarm; the CLI only prints.

    with Supervisor(UpConfig(model, nodes=3, port=8000), on_stopping=...) as up:
        up.plan                      # what will run (model, blocks per node): print it
        summary = up.start()         # bootstrap + nodes + gateway, ready; raises StartError
        up.generate(prompt, 64, sys.stdout)
        up.watch(on_exit)            # until SIGINT / SIGTERM / SIGHUP; on_exit(name, log_tail)

What it promises:
- Entering checks that the gateway port is free, before anything starts: a port in use is a
  `StartError` (one sentence naming the port and `--port`), not a gateway dying in a log.
- From entering to leaving, SIGINT, SIGTERM and SIGHUP (a closed terminal) stop the swarm,
  also while it is starting or generating; leaving the block stops every process it started
  (all at once, bounded: LocalSwarm.stop) and returns normally after such a signal. A second
  signal while stopping is ignored: the stop is already bounded.
- If this process is killed outright (SIGKILL), its children still die within seconds: they
  get SIGTERM from the kernel, and their p2p daemons die with them (see lifeline.py).
- With `lan`, its bootstrap and nodes listen on every interface and advertise the swarm on the
  local network (swarm/lan.py), so that `swarmllm serve` on another machine of the LAN joins it
  with no flags; without, they listen on loopback only and nothing leaves this machine.
- Its bootstrap and nodes keep their identities across runs (`identity_dir`, default the state
  folder's identities/up/: bootstrap.key, node0.key, ...), so their peer ids stay the same. The
  folder is held while the swarm runs: a second `up` at the same time takes identities/up-2/.
  The bootstrap listens on a new port each run, so its multiaddr still changes.
- A process that fails to start is a `StartError` whose sentence is the child's own error
  line when it printed one (e.g. "swarmllm serve: error: ..."), else where its log is.
It prints nothing itself: `on_stopping` and `on_exit` are the caller's, and errors from them
(stdout gone with the terminal) never stop the shutdown.
"""

from __future__ import annotations

import errno
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, TextIO

from swarmllm.harness.local_swarm import LocalSwarm, LocalSwarmError, even_spans
from swarmllm.swarm.identity import IdentityFolder, claim_identity_folder
from swarmllm.harness.processes import ManagedProcess

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StartError(RuntimeError):
    """The swarm could not start; the message is one sentence for the user."""


class _StopRequested(BaseException):
    """Raised in the main thread by a stop signal, like KeyboardInterrupt for SIGINT."""


@dataclass(frozen=True)
class UpConfig:
    model: str
    nodes: int = 3
    host: str = "127.0.0.1"          # the gateway's interface
    port: int = 8000                 # the gateway's port
    timeout: float = 300.0           # seconds each group of processes may take to be ready
    log_dir: Optional[str] = None
    identity_dir: Optional[Path] = None  # default: the state folder's identities/up/ (identity.py), kept across runs
    lan: bool = False                # bootstrap and nodes listen on all interfaces and advertise on the LAN (mDNS)


@dataclass(frozen=True)
class SwarmPlan:
    model_id: str
    n_blocks: int
    spans: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class NodeSummary:
    name: str
    peer_id: str
    start: int
    end: int
    throughput: float


@dataclass(frozen=True)
class SwarmSummary:
    seconds: float                   # from start() to ready
    log_dir: Path
    url: str                         # the gateway
    initial_peers: tuple[str, ...]
    nodes: tuple[NodeSummary, ...]


def check_port_free(host: str, port: int) -> None:
    """StartError if (host, port) cannot be listened on (as uvicorn would: SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise StartError(f"port {port} on {host} is already in use (another `swarmllm up` or gateway?); "
                                 f"stop it or pass another --port, e.g. --port {port + 1}") from None
            raise StartError(f"cannot listen on {host}:{port} ({e.strerror}); pass another --host or --port") from None


def _child_error(proc: ManagedProcess) -> Optional[str]:
    """The last error sentence the child printed (`swarmllm CMD: error: ...`), if any."""
    for line in reversed(proc.log_tail(40).splitlines()):
        if line.startswith("swarmllm ") and ": error: " in line:
            return line.split(": error: ", 1)[1].strip()
    return None


class Supervisor:
    def __init__(self, config: UpConfig, on_stopping: Optional[Callable[[], None]] = None):
        if config.nodes < 1:
            raise StartError(f"--nodes must be at least 1, got {config.nodes}")
        self.config = config
        self.on_stopping = on_stopping
        self.swarm: Optional[LocalSwarm] = None
        self._plan: Optional[SwarmPlan] = None
        self._previous_handlers: dict[int, object] = {}
        self._reported: set[str] = set()
        self._identities: Optional[IdentityFolder] = None

    @property
    def plan(self) -> SwarmPlan:
        if self._plan is None:
            from swarmllm.models.catalog import resolve_model
            from swarmllm.weights import read_config

            source = resolve_model(self.config.model)
            n_blocks = read_config(source).n_blocks
            self._plan = SwarmPlan(source.model_id, n_blocks, tuple(even_spans(n_blocks, self.config.nodes)))
        return self._plan

    # --- signals -------------------------------------------------------------------------
    def __enter__(self) -> "Supervisor":
        check_port_free(self.config.host, self.config.port)
        for sig in STOP_SIGNALS:
            self._previous_handlers[sig] = signal.signal(sig, self._on_signal)
        return self

    @staticmethod
    def _on_signal(signum, frame) -> None:
        raise _StopRequested(signum)

    def __exit__(self, exc_type, exc, tb) -> bool:
        for sig in STOP_SIGNALS:  # from here on the stop must run to its end
            signal.signal(sig, signal.SIG_IGN)
        try:
            if self.swarm is not None:
                if self.on_stopping is not None:
                    try:
                        self.on_stopping()
                    except (OSError, ValueError):  # the terminal is gone (SIGHUP): stop anyway
                        pass
                self.swarm.stop()
        finally:
            if self._identities is not None:
                self._identities.release()
            for sig, handler in self._previous_handlers.items():
                signal.signal(sig, handler)
        return exc_type is not None and issubclass(exc_type, (_StopRequested, KeyboardInterrupt))

    # --- the swarm -----------------------------------------------------------------------
    def start(self) -> SwarmSummary:
        config, plan = self.config, self.plan
        identity_dir = config.identity_dir
        if identity_dir is None:
            self._identities = claim_identity_folder("up")
            identity_dir = self._identities.path
        self.swarm = LocalSwarm(config.model, plan.spans, log_dir=Path(config.log_dir) if config.log_dir else None,
                                identity_dir=identity_dir, host="0.0.0.0" if config.lan else "127.0.0.1",
                                lan=config.lan)
        began = time.perf_counter()
        try:
            self.swarm.start(timeout=config.timeout)
            gateway = self.swarm.add_gateway(config.port, ["--host", config.host] if config.host != self.swarm.host
                                             else [])
            self.swarm.wait_ready([gateway], timeout=config.timeout)
        except LocalSwarmError as e:
            raise StartError(self._start_failure(e)) from None
        nodes = tuple(NodeSummary(n.name, n.ready["peer_id"], n.ready["start"], n.ready["end"], n.ready["throughput"])
                      for n in self.swarm.nodes)
        return SwarmSummary(time.perf_counter() - began, self.swarm.log_dir, gateway.ready["url"],
                            tuple(self.swarm.initial_peers), nodes)

    def _start_failure(self, error: LocalSwarmError) -> str:
        proc = error.process
        if proc is None:
            return str(error).splitlines()[0]
        reason = _child_error(proc)
        if proc.alive:
            return f"{proc.name} was not ready after {self.config.timeout:.0f} s; see its log, {proc.log_path}"
        if reason:
            return f"{proc.name} could not start: {reason}"
        return f"{proc.name} exited before it was ready; the end of its log, {proc.log_path}:\n{proc.log_tail(12)}"

    def generate(self, prompt: str, max_new_tokens: int, stream_to: TextIO) -> None:
        """A reply to `prompt` through the swarm, streamed to `stream_to`."""
        from swarmllm.client.generation import GenerationOptions, Generator
        from swarmllm.client.swarm_client import SwarmClient
        from swarmllm.engine.sampling import SamplingParams

        def write(text: str) -> None:
            stream_to.write(text)
            stream_to.flush()

        with SwarmClient.connect(list(self.swarm.initial_peers)) as client:
            generator = Generator.swarm(self.config.model, client)
            generator.generate(generator.model.prompt_ids(prompt),
                               GenerationOptions(SamplingParams(max_new_tokens=max_new_tokens)), write)

    def watch(self, on_exit: Callable[[str, str], None], period: float = 1.0) -> None:
        """Until a stop signal: report each process that exits (its name, its log's end) once."""
        while True:
            for proc in self.swarm.nodes + self.swarm.gateways + list(self.swarm.relays.values()) \
                    + [self.swarm.bootstrap]:
                if not proc.alive and proc.name not in self._reported:
                    self._reported.add(proc.name)
                    on_exit(proc.name, proc.log_tail())
            time.sleep(period)
