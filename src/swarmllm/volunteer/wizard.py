"""`swarmllm setup --web`: the setup wizard, a local page that shows what this machine could give and starts it.

    GET  /                 the wizard page (web/setup.html, built into swarmllm/gateway/static)
    GET  /api/survey       {"machine", "coverage", "plan", "problem", "caps", "would_run"} for the caps in
                           the query (max_memory_gb, max_gpu_memory_gb, threads, max_upload_mbit,
                           max_download_mbit, schedule, when_idle, model; all optional): a cap change re-plans
    POST /api/start        the same caps as JSON -> starts the node; {"command", "pid", "status_url", "log"}
    GET  /api/node         the started node's own report, read from its status page (or 503 until it answers)

What it shows comes from the volunteer package (volunteer/run.py): the machine is detected once
(runtime/machine.py), the swarm's coverage is read through a short-lived client node and kept for
SWARM_REFRESH seconds, one block of a planned model on disk is timed once, and every cap change
re-runs the pure planner (volunteer/plan.py) over what was read: answers stay fast while the
volunteer moves the controls.

Start runs `swarmllm volunteer` with the chosen caps as a child process in its own session,
detached from the wizard (its output goes to a log file in the state folder): closing the wizard
or pressing Ctrl-C in its terminal does not stop the node, which keeps serving until it is stopped
itself (Ctrl-C in its own terminal is not available, so: SIGTERM, the system service, or a reboot).
In-process would tie the node's life, its signal handling and its torch threads to a web server that
is meant to be closed once the node runs. The command is built from validated numbers and a checked
schedule, never from text passed through.

It listens on 127.0.0.1 by default. Because it can start a process, requests whose Host header
names another host are refused (DNS rebinding), and POST /api/start takes only application/json
(which a page elsewhere cannot send here without a CORS preflight that this app never answers).
Every refusal is a JSON sentence.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

import swarmllm
from swarmllm.models.catalog import CATALOG
from swarmllm.state import state_dir
from swarmllm.volunteer.plan import Caps, plan_volunteer
from swarmllm.volunteer.run import candidates, coverage_map, measure_block_rate, read_swarm
from swarmllm.volunteer.schedule import parse_schedule

logger = logging.getLogger(__name__)

STATIC_DIR = Path(swarmllm.__file__).parent / "gateway" / "static"
SWARM_REFRESH = 20.0         # seconds the swarm's coverage is reused before it is read again
START_CHECK_SECONDS = 2.0    # a node that dies this soon after Start is reported as failed, with its log
LOCAL_HOSTS = {"127.0.0.1", "localhost", "[::1]"}
GIB, MBIT = 2**30, 1e6


class CapsError(ValueError):
    """A cap the volunteer set that cannot be used; the message says which and why."""


def _number(values: Mapping[str, Any], name: str, integer: bool = False) -> Optional[float]:
    raw = values.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise CapsError(f"{name} must be a number, got {str(raw)[:40]!r}") from None
    if not math.isfinite(value) or value <= 0 or (integer and value != int(value)):
        raise CapsError(f"{name} must be a positive {'whole ' if integer else ''}number (leave it empty for no "
                        f"cap), got {str(raw)[:40]!r}")
    return int(value) if integer else value


def parse_caps(values: Mapping[str, Any]) -> tuple[Caps, Optional[str]]:
    """(the caps, the pinned model or None) from the query or JSON body; CapsError saying what is wrong."""
    unknown = set(values) - {"max_memory_gb", "max_gpu_memory_gb", "threads", "max_upload_mbit",
                             "max_download_mbit", "schedule", "when_idle", "model", "refresh"}
    if unknown:
        raise CapsError(f"unknown setting(s) {', '.join(sorted(unknown))[:200]}")
    schedule = (values.get("schedule") or "").strip() or None
    if schedule is not None:
        try:
            parse_schedule(schedule)
        except ValueError as e:
            raise CapsError(str(e)) from None
    when_idle = values.get("when_idle")
    if isinstance(when_idle, str):
        when_idle = when_idle.lower() in ("1", "true", "yes", "on")
    memory, gpu = _number(values, "max_memory_gb"), _number(values, "max_gpu_memory_gb")
    upload, download = _number(values, "max_upload_mbit"), _number(values, "max_download_mbit")
    caps = Caps(max_memory_bytes=int(memory * GIB) if memory else None,
                max_gpu_memory_bytes=int(gpu * GIB) if gpu else None, threads=_number(values, "threads", True),
                max_upload_bps=upload * MBIT if upload else None, max_download_bps=download * MBIT if download else None,
                schedule=schedule, when_idle=bool(when_idle))
    model = values.get("model") or None
    if model is not None and (not isinstance(model, str) or model not in CATALOG):
        raise CapsError(f"model must be a catalog name ({', '.join(sorted(CATALOG))}), got {str(model)[:60]!r}")
    return caps, model


def volunteer_argv(program: Sequence[str], caps: Caps, model: Optional[str], initial_peers: Sequence[str],
                   status_port: int, extra: Sequence[str] = ()) -> list[str]:
    """The `swarmllm volunteer` command line for these caps (what Start runs, and the page shows)."""
    argv = [*program, "volunteer"]
    if initial_peers:
        argv += ["--initial-peers", ",".join(initial_peers)]
    if model:
        argv += ["--model", model]
    if caps.max_memory_bytes:
        argv += ["--max-memory", f"{caps.max_memory_bytes // 2**20}MiB"]
    if caps.max_gpu_memory_bytes:
        argv += ["--max-gpu-memory", f"{caps.max_gpu_memory_bytes // 2**20}MiB"]
    if caps.threads:
        argv += ["--threads", str(caps.threads)]
    if caps.max_upload_bps:
        argv += ["--max-upload", f"{caps.max_upload_bps:.0f}"]      # a plain number is bits/s
    if caps.max_download_bps:
        argv += ["--max-download", f"{caps.max_download_bps:.0f}"]
    if caps.schedule:
        argv += ["--schedule", caps.schedule]
    if caps.when_idle:
        argv.append("--when-idle")
    return argv + ["--status-port", str(status_port), *extra]


_CAP_FLAGS = {"max_memory_bytes": "--max-memory", "max_gpu_memory_bytes": "--max-gpu-memory", "threads": "--threads",
              "max_upload_bps": "--max-upload", "max_download_bps": "--max-download", "schedule": "--schedule",
              "when_idle": "--when-idle"}
_CAP_LABELS = {"--max-upload": "Max upload", "--max-download": "Max download", "--max-gpu-memory": "Max GPU memory"}


@dataclass
class Wizard:
    """What the wizard knows: the swarm to join, where the node's page will be, and what it started."""

    initial_peers: Sequence[str]
    status_port: int = 8642
    program: Sequence[str] = (sys.executable, "-m", "swarmllm.cli")
    extra_args: Sequence[str] = ()          # further `volunteer` options (--no-lan, --host, --name ...)
    measure: bool = True                    # time one block of a planned model on disk
    volunteer_flags: Optional[frozenset] = None  # the options this swarmllm's `volunteer` takes (None: all)
    machine: Any = None
    _views: Optional[list] = None
    _read_at: float = -math.inf
    _rates: dict = field(default_factory=dict)   # (model, threads) -> decode tokens/s through one block
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    child: Optional[subprocess.Popen] = None
    child_log: Optional[Path] = None

    async def _swarm_views(self, refresh: bool) -> list:
        async with self._lock:  # one read of the swarm at a time, shared by every request waiting for it
            if refresh or self._views is None or time.monotonic() - self._read_at > SWARM_REFRESH:
                self._views = await read_swarm(self.initial_peers)
                self._read_at = time.monotonic()
            return self._views

    def check(self, caps: Caps) -> None:
        """CapsError if a cap has no flag in this swarmllm's `volunteer` (Start would run a refused command)."""
        if self.volunteer_flags is None:
            return
        for name, flag in _CAP_FLAGS.items():
            if getattr(caps, name) and flag not in self.volunteer_flags:
                raise CapsError(f"this swarmllm's `volunteer` has no {flag} option yet: leave "
                                f"{_CAP_LABELS.get(flag, flag)} empty (or upgrade swarmllm)")

    async def survey(self, caps: Caps, model: Optional[str], refresh: bool = False) -> dict:
        self.check(caps)
        if self.machine is None:
            from swarmllm.runtime.machine import detect_machine

            self.machine = await asyncio.get_running_loop().run_in_executor(None, detect_machine)
        views = await self._swarm_views(refresh)
        plan, problem = plan_volunteer(self.machine, caps, candidates(views, self._rates_for(caps)), model)
        on_disk = {v.model_id for v in views if v.on_disk}
        key = (plan.model_id, plan.threads) if plan is not None else None
        if key is not None and self.measure and plan.model_id in on_disk and key not in self._rates:
            # A block's speed depends on the threads: timed once per (model, threads) the volunteer tries.
            self._rates[key] = await asyncio.get_running_loop().run_in_executor(None, measure_block_rate, *key)
            plan, problem = plan_volunteer(self.machine, caps, candidates(views, self._rates_for(caps)), model)
        return {"machine": self.machine.to_json(), "coverage": coverage_map(views),
                "plan": plan.to_json() if plan else None, "problem": problem, "caps": caps.to_json(),
                "would_run": self.argv(caps, model), "swarm_read_seconds_ago": round(time.monotonic() - self._read_at),
                "started": self.started()}

    def _rates_for(self, caps: Caps) -> dict:
        """{model: block rate} timed with the threads these caps give (the planner's rule for them)."""
        threads = max(1, min(caps.threads or self.machine.physical_cores, self.machine.logical_cores))
        return {m: r for (m, t), r in self._rates.items() if t == threads and r}

    def argv(self, caps: Caps, model: Optional[str]) -> list[str]:
        return volunteer_argv(self.program, caps, model, self.initial_peers, self.status_port, self.extra_args)

    @property
    def status_url(self) -> str:
        return f"http://127.0.0.1:{self.status_port}/"

    def started(self) -> Optional[dict]:
        if self.child is None:
            return None
        code = self.child.poll()
        return {"pid": self.child.pid, "running": code is None, "exit_code": code, "status_url": self.status_url,
                "log": str(self.child_log)}

    def start(self, caps: Caps, model: Optional[str]) -> dict:
        """Start the node as a detached child process; RuntimeError (a sentence) if it cannot run."""
        if self.child is not None and self.child.poll() is None:
            raise RuntimeError(f"this wizard already started a node (pid {self.child.pid}); its page is "
                               f"{self.status_url}")
        self.check(caps)
        argv = self.argv(caps, model)
        log_dir = state_dir() / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.child_log = log_dir / f"volunteer-{time.strftime('%Y%m%d-%H%M%S')}.log"
        detach: dict[str, Any] = {"start_new_session": True} if os.name == "posix" else {
            "creationflags": subprocess.DETACHED_PROCESS | subprocess.CREATE_NEW_PROCESS_GROUP}
        with open(self.child_log, "ab") as log:
            self.child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          close_fds=True, **detach)
        try:
            code = self.child.wait(START_CHECK_SECONDS)
        except subprocess.TimeoutExpired:
            code = None
        if code is not None:
            tail = self.child_log.read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"the node exited at once (code {code}): {' '.join(tail)[-400:] or 'no output'}")
        return {"command": argv, "pid": self.child.pid, "status_url": self.status_url, "log": str(self.child_log)}

    def node_report(self) -> Optional[dict]:
        """The started node's GET /api/node, or None while it does not answer."""
        try:
            with urllib.request.urlopen(self.status_url + "api/node", timeout=2) as reply:
                return json.loads(reply.read())
        except (OSError, ValueError):
            return None


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(wizard: Wizard, allow_any_host: bool = False, static_dir: Path = STATIC_DIR) -> FastAPI:
    app = FastAPI(title="swarmllm setup", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def local_only(request: Request, call_next):
        host = (request.headers.get("host") or "127.0.0.1").lower().rsplit(":", 1)[0]
        if not allow_any_host and host not in LOCAL_HOSTS:
            return _error(403, f"the setup wizard answers only on 127.0.0.1, not for host {host[:80]!r}")
        return await call_next(request)

    @app.get("/api/survey")
    async def survey(request: Request):
        try:
            caps, model = parse_caps(dict(request.query_params))
        except CapsError as e:
            return _error(400, str(e))
        try:
            return await wizard.survey(caps, model, refresh=request.query_params.get("refresh") == "1")
        except CapsError as e:
            return _error(400, str(e))
        except Exception as e:  # the swarm unreachable, a probe that broke: a sentence, the wizard stays up
            logger.warning("survey failed: %s", e)
            return _error(503, f"could not read the swarm or this machine: {e}")

    @app.post("/api/start")
    async def start(request: Request):
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return _error(415, "send the caps as JSON (Content-Type: application/json)")
        try:
            body = json.loads(await request.body() or b"{}")
            if not isinstance(body, dict):
                raise CapsError("the body must be a JSON object of caps")
            caps, model = parse_caps(body)
        except (CapsError, ValueError) as e:
            return _error(400, str(e) if isinstance(e, CapsError) else f"the body is not JSON: {e}")
        try:
            return await asyncio.get_running_loop().run_in_executor(None, wizard.start, caps, model)
        except CapsError as e:
            return _error(400, str(e))
        except RuntimeError as e:
            return _error(409 if "already started" in str(e) else 500, str(e))
        except OSError as e:
            return _error(500, f"could not start the node: {e}")

    @app.get("/api/node")
    async def node():
        report = await asyncio.get_running_loop().run_in_executor(None, wizard.node_report)
        if report is None:
            started = wizard.started()
            why = "no node was started yet" if started is None else (
                "the node is starting (its status page does not answer yet)" if started["running"]
                else f"the node exited (code {started['exit_code']}); see {started['log']}")
            return JSONResponse({"error": why, "started": started}, status_code=503)
        return {**report, "status_url": wizard.status_url}

    @app.get("/", include_in_schema=False)
    async def page():
        path = static_dir / "setup.html"
        if not path.is_file():
            return _error(404, "the wizard page is not built: run `npm ci && npm run build` in web/")
        return FileResponse(path)

    if (static_dir / "assets").is_dir():
        app.mount("/assets", StaticFiles(directory=static_dir / "assets"), name="assets")
    return app
