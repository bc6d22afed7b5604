"""Start `python -m swarmllm.cli ...` children of the harness without paying for their imports each time.

A swarmllm process spends ~3.5 s of CPU importing torch and hivemind before it does anything; a test
run starts a few hundred of them on a 2-core machine. The zygote is one process that imports them
once, then forks a child per command: the child is a real process of its own (own pid, session, log
file, environment, working folder) that runs `swarmllm.cli` as `python -m swarmllm.cli` would, and
dies with the zygote, which dies with the process that started it (lifeline.py's PDEATHSIG).

    process = zygote().spawn(["serve", "--model", ...], env, log_path)   # a Popen-like handle

Only commands whose environment agrees with the zygote's on what is read at import time (ZYGOTE_ENV:
PYTHONPATH, OpenMP, MKL, torch and hivemind settings) are forked; `ManagedProcess` starts the others,
and everything else, with subprocess as before. It is on where SWARMLLM_ZYGOTE=1, which the test suite
sets (tests/conftest.py; SWARMLLM_ZYGOTE=0 turns it off): a 3-node swarm starts in ~5 s instead of ~11
on 2 cores.

What a child must not inherit from the zygote (the first two made tests fail before they were fixed):
- signal dispositions other than a fresh interpreter's (`_signal_dispositions`): with SIGPIPE at its
  default, a node writing to a killed peer's stream died of it (the chaos run's "crashed by others");
- torch's after-fork hook (`_preload`): it fixed the child's main-thread OpenMP count before the node's
  `--num-threads`, so forked nodes announced another compute class than fresh ones (the liars) and
  verification chose colluders as each other's witnesses;
- the ends of earlier children: pids are reused within a suite run (pid_max 32768), so a child's end
  is recorded on its own handle, not by pid.
A child also ends as the interpreter would (non-daemon threads, atexit, flush), not by os._exit alone.

The zygote runs one thread (numpy's OpenBLAS worker is shut down by OpenBLAS's own fork handler), as
forking a process with threads can leave a lock held in the child: it reads one JSON request per line
on stdin, forks, answers {"pid": N}, and reports each child's end as {"exit": N, "code": C} (negative:
killed by that signal), waking on SIGCHLD through a pipe; an end is always reported before a later fork.
Standard library only on the caller's side.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from swarmllm.lifeline import die_with_parent

# What the children read when their modules are imported, which happens once, in the zygote.
# (hivemind reads its HIVEMIND_* and the two others at import, MKL its settings when it starts.)
ZYGOTE_ENV = ("PYTHONPATH", "PYTHONHASHSEED", "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "MKL_CBWR",
              "TORCH_NUM_THREADS", "HIVEMIND_LOGLEVEL", "HIVEMIND_COLORS", "HIVEMIND_ALWAYS_LOG_CALLER",
              "HIVEMIND_DHT_NUM_WORKERS", "HIVEMIND_MEMORY_SHARING_STRATEGY", "USE_LEGACY_BFLOAT16",
              "QUANTIZATION_THREADS", "LD_PRELOAD", "LD_LIBRARY_PATH")
# What an unset variable amounts to in a child: swarm/node.py sets HIVEMIND_LOGLEVEL when it is unset; hivemind
# colours its log when stderr is a terminal, which a child's log file never is (the zygote's stderr may be).
IMPORT_DEFAULTS = {"HIVEMIND_LOGLEVEL": "WARNING", "HIVEMIND_COLORS": "0"}
PRELOAD = ("torch", "numpy", "swarmllm.swarm.hivemind_core", "hivemind.dht.node", "hivemind.p2p", "pydantic",
           "cryptography.hazmat.primitives.asymmetric.ed25519", "psutil", "gguf")  # not swarmllm.cli: it runs as __main__


def enabled() -> bool:
    return os.environ.get("SWARMLLM_ZYGOTE", "0") == "1" and sys.platform.startswith("linux")


class ZygoteProcess:
    """The part of subprocess.Popen that ManagedProcess uses, for a child of the zygote. Its return code is
    set by the zygote's report of its end; its pid may be reused by a later child after that."""

    def __init__(self, owner: "Zygote", pid: int):
        self._owner, self.pid = owner, pid
        self.returncode: Optional[int] = None

    def poll(self) -> Optional[int]:
        with self._owner.changed:
            if self.returncode is None and self._owner.closed:
                self.returncode = -signal.SIGKILL  # the zygote died without reporting it: it died with the zygote
            return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._owner.changed:
            while self.poll() is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(f"zygote child {self.pid}", timeout)
                self._owner.changed.wait(left if left is not None else 1.0)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygote:
    def __init__(self) -> None:
        self.env = {k: v for k, v in os.environ.items()}
        self.env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as LocalSwarm gives its nodes
        self.env.setdefault("HIVEMIND_COLORS", IMPORT_DEFAULTS["HIVEMIND_COLORS"])
        self._proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      env=self.env, start_new_session=True, preexec_fn=die_with_parent(signal.SIGTERM))
        self._spawn_lock = threading.Lock()
        self.changed = threading.Condition()
        # Children by pid while they run. Not a table of exit codes by pid: pids are reused (pid_max is
        # 32768 here, and a suite run goes round it), and a new child must not inherit an old one's end.
        self._running: dict[int, ZygoteProcess] = {}
        self._spawned: list[ZygoteProcess] = []
        self.closed = False  # the zygote's output ended: every report it made has been read
        self._reader = threading.Thread(target=self._read, name="zygote-reader", daemon=True)
        self._reader.start()

    def accepts(self, env: dict) -> bool:
        def value(e: dict, k: str):
            return e.get(k, IMPORT_DEFAULTS.get(k))
        return self._proc.poll() is None and all(value(env, k) == value(self.env, k) for k in ZYGOTE_ENV)

    def spawn(self, args: list[str], env: dict, log_path: Path, cwd: Optional[str] = None) -> ZygoteProcess:
        request = {"args": list(args), "env": dict(env), "log": str(log_path), "cwd": cwd or os.getcwd()}
        with self._spawn_lock:
            with self.changed:
                before = len(self._spawned)
            try:
                self._proc.stdin.write((json.dumps(request) + "\n").encode())
                self._proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                raise RuntimeError("the harness's zygote process died") from None
            with self.changed:
                while len(self._spawned) == before:
                    if self.closed:
                        raise RuntimeError("the harness's zygote process died")
                    self.changed.wait(1.0)
                return self._spawned[before]

    def _read(self) -> None:
        """Reports arrive in order: a child's end before any later child that reuses its pid is forked."""
        try:
            for line in self._proc.stdout:
                message = json.loads(line)
                with self.changed:
                    if "pid" in message:
                        child = ZygoteProcess(self, message["pid"])
                        self._running[child.pid] = child
                        self._spawned.append(child)
                    else:
                        child = self._running.pop(message["exit"], None)
                        if child is not None:
                            child.returncode = message["code"]
                    self.changed.notify_all()
        finally:
            with self.changed:
                self.closed = True
                self.changed.notify_all()


_zygote: Optional[Zygote] = None
_zygote_lock = threading.Lock()


def zygote() -> Zygote:
    """This process's zygote, started on first use."""
    global _zygote
    with _zygote_lock:
        if _zygote is None or _zygote._proc.poll() is not None:
            _zygote = Zygote()
        return _zygote


# --- the zygote process ---------------------------------------------------------------------
def _signal_dispositions() -> dict[int, object]:
    """Every signal's handler as this interpreter has it now: in the zygote, before it installs its own,
    what a fresh `python -m swarmllm.cli` also starts with (SIGPIPE and SIGXFSZ ignored, SIGINT raising
    KeyboardInterrupt, plus whatever the preloaded modules set)."""
    dispositions = {}
    for sig in signal.valid_signals():
        try:
            handler = signal.getsignal(sig)
        except (OSError, ValueError):
            continue
        if handler is not None:  # None: set outside Python, left as it is
            dispositions[sig] = handler
    return dispositions


def _child(request: dict, with_parent, dispositions: dict[int, object]) -> None:
    """In the forked child: become the command, as `python -m swarmllm.cli ARGS` would be."""
    code = 1
    try:
        os.setsid()
        if with_parent is not None:
            with_parent()  # dies with the zygote, as a ManagedProcess child with its starter
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.closerange(3, 4096)
        signal.set_wakeup_fd(-1)
        for sig, handler in dispositions.items():
            # Not SIG_DFL for all: with SIGPIPE at its default, a write to a peer that went away (a
            # killed node's stream) kills the writer, where Python ignores it and raises BrokenPipeError.
            if signal.getsignal(sig) is not handler:
                signal.signal(sig, handler)
        os.chdir(request["cwd"])
        if not getattr(sys.flags, "safe_path", False):  # `python -m` looks first in its working folder
            sys.path[0] = request["cwd"]
        os.environ.clear()
        os.environ.update(request["env"])
        import random

        random.seed()  # the zygote's state would give every child the same draws
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        sys.stdin = open(0, "r", closefd=False)
        sys.argv = [sys.argv[0], *request["args"]]
        import runpy

        try:
            runpy.run_module("swarmllm.cli", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if not isinstance(e.code, (int, type(None))):
                print(e.code, file=sys.stderr)
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
    finally:
        try:
            _shut_down_as_the_interpreter_does()
        finally:
            os._exit(code)


def _shut_down_as_the_interpreter_does() -> None:
    """What Python does after `__main__` ends, before the process exits: wait for non-daemon threads
    (and run what threading._register_atexit holds, e.g. concurrent.futures joining its workers), run
    the atexit functions, flush stdout and stderr. os._exit alone would cut all of that short."""
    import atexit

    try:
        threading._shutdown()
        atexit._run_exitfuncs()
    except BaseException:  # a Ctrl-C while waiting, as at a real interpreter's exit: stop waiting
        pass
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass


def _preload() -> None:
    """Import PRELOAD, without torch's after-fork hook.

    torch registers `torch.get_num_threads` to run in every forked child (for children of a parent
    whose OpenMP pool already ran; the zygote never runs a torch op). That call fixes the forking
    thread's OpenMP thread count at the default, and the forking thread is the child's main thread:
    the `--num-threads` a node then sets from its loading thread never reaches it, so its event
    loop's compute ran with 2 threads where a fresh process uses 1, and it announced another compute
    class (runtime/compute_class.py). Witnesses are chosen by class, so in the colluding-liars test the
    forked honest nodes lost their turn to a colluder of the fresh processes' class."""
    import importlib

    register = os.register_at_fork

    def register_all_but_torch_threads(**hooks) -> None:
        torch = sys.modules.get("torch")
        if torch is not None and hooks.get("after_in_child") is getattr(torch, "get_num_threads", None):
            return
        register(**hooks)

    os.register_at_fork = register_all_but_torch_threads
    try:
        for name in PRELOAD:
            try:
                importlib.import_module(name)
            except ImportError:
                pass
    finally:
        os.register_at_fork = register


def _serve() -> None:
    _preload()
    dispositions = _signal_dispositions()  # before the zygote's own SIGCHLD handler below
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    out = sys.stdout.buffer
    stdin = sys.stdin.buffer.raw
    with_parent = die_with_parent(signal.SIGTERM)  # made here: it names the zygote as the parent
    pending = b""
    while True:
        ready, _, _ = select.select([stdin, wake_r], [], [], 1.0)
        if wake_r in ready:
            os.read(wake_r, 4096)
        while True:  # reap every child that ended
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            out.write((json.dumps({"exit": pid, "code": code}) + "\n").encode())
            out.flush()
        if stdin in ready:
            chunk = os.read(stdin.fileno(), 65536)
            if not chunk:
                return  # the harness closed the pipe: its children get SIGTERM as the zygote exits
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                pid = os.fork()
                if pid == 0:
                    _child(json.loads(line), with_parent, dispositions)
                out.write((json.dumps({"pid": pid}) + "\n").encode())
                out.flush()


if __name__ == "__main__":
    _serve()
