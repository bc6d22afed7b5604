"""Child processes of the development harness, and how they say they are ready.

A `ManagedProcess` is one `swarmllm` command (bootstrap, serve, gateway, a netem relay) run
as a child with its output in a log file. A process is ready when it prints a line starting
with `READY_MARKER` followed by a JSON object (its role, peer id, addresses, ...). Standard
library only, so the relays (netem.py) that import it start fast.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

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
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        log.close()

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

    def stop(self, timeout: float = 10.0) -> None:
        if not self.alive:
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)
