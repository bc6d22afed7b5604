"""Child processes of the development harness, and how they say they are ready.

A `ManagedProcess` is one `swarmllm` command (bootstrap, serve, gateway, a netem relay) run
as a child with its output in a log file. A process is ready when it prints a line starting
with `READY_MARKER` followed by a JSON object (its role, peer id, addresses, ...). Standard
library only, so the relays (netem.py) that import it start fast.

Every child runs in its own session (so that a terminal's Ctrl-C or hang-up reaches only the
supervisor, which stops the children in order) and dies with the process that started it,
even if that one is SIGKILLed: it gets SIGTERM then (see lifeline.py), and shuts down as on
`stop()`. Its p2p daemon dies with it in turn (swarm/daemon.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from swarmllm.lifeline import child_command, die_with_parent

READY_MARKER = "swarmllm-ready "


@dataclass
class ManagedProcess:
    name: str
    args: list[str]
    log_path: Path
    process: Optional[subprocess.Popen] = None
    ready: Optional[dict] = None
    _log_offset: int = 0

    def start(self, env: dict) -> None:
        self.ready = None
        # Read readiness only from what this run writes: the log may hold earlier runs.
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        if self._zygote_can_start(env):
            from swarmllm.harness.zygote import zygote

            self.process = zygote().spawn(self.args[3:], env, self.log_path)  # a fork of a pre-imported process
            return
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(child_command(self.args), stdout=log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True, preexec_fn=die_with_parent(signal.SIGTERM))
        log.close()

    def _zygote_can_start(self, env: dict) -> bool:
        """`python -m swarmllm.cli ...` under an environment the zygote's imports agree with (zygote.py)."""
        if self.args[:3] != [sys.executable, "-m", "swarmllm.cli"]:
            return False
        from swarmllm.harness import zygote

        return zygote.enabled() and zygote.zygote().accepts(env)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def poll_ready(self) -> Optional[dict]:
        if self.ready is None and self.log_path.exists():
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                text = f.read().decode(errors="replace")
            for line in text.splitlines():
                if line.startswith(READY_MARKER):
                    self.ready = json.loads(line[len(READY_MARKER):])
        return self.ready

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def signal(self, sig: int) -> None:
        if self.alive:
            os.kill(self.process.pid, sig)

    def terminate(self) -> None:
        """Ask it to shut down (SIGCONT first: a stopped process would not see the SIGTERM)."""
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)

    def finish(self, deadline: float) -> None:
        """Wait until time.monotonic() reaches deadline, then SIGKILL its process group."""
        if self.process is None:
            return
        try:
            self.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(5)

    def stop(self, timeout: float = 10.0) -> None:
        if not self.alive:
            return
        self.terminate()
        self.finish(time.monotonic() + timeout)
