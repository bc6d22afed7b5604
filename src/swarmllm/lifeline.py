"""Child processes that die with their parent, so that nothing is left running as an orphan.

Two mechanisms, one contract: a child started with `child_command` + `die_with_parent` ends
within a few seconds of its parent's death, however the parent died (SIGKILL included).

- Linux: `die_with_parent(sig)` is a `preexec_fn` that asks the kernel (prctl
  PR_SET_PDEATHSIG) to send `sig` to the child when its parent dies, and signals the child at
  once if the parent already died between fork and prctl. The kernel tracks the parent
  *thread* that forked the child, so this is only used from a thread that outlives its
  children (the main thread, an event loop's thread); `pdeathsig_usable()` says when.
- Elsewhere, or when forking from a short-lived thread: `child_command(args)` runs a
  `python -m MODULE ...` command under `python -m swarmllm.lifeline PARENT_PID -m MODULE ...`
  (likewise `-c CODE`),
  whose watchdog thread polls getppid(); once the parent is gone it sends SIGTERM to its
  own process and, if that has not ended it after `grace` s, SIGKILL to its process group.

What this does not do: it cannot put a watchdog inside a non-Python child (p2pd); those get
the prctl signal on Linux only (see swarm/daemon.py). Standard library only, so that the
netem relays, which import the harness, start fast.
"""

from __future__ import annotations

import ctypes
import functools
import os
import runpy
import signal
import sys
import threading
import time
from typing import Callable, Optional, Sequence

_PR_SET_PDEATHSIG = 1


@functools.lru_cache(maxsize=None)
def _prctl() -> Optional[Callable]:
    """libc's prctl, looked up in the parent (the child, between fork and exec, should do as
    little as possible); the process's own symbols hold libc, so no find_library (which runs
    ldconfig, ~50 ms on every CLI start)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def pdeathsig_usable() -> bool:
    """Whether a child forked from the calling thread can rely on PR_SET_PDEATHSIG."""
    return _prctl() is not None and threading.current_thread() is threading.main_thread()


def die_with_parent(sig: int = signal.SIGTERM, *, any_thread: bool = False) -> Optional[Callable[[], None]]:
    """A preexec_fn giving the child `sig` when this process dies; None where prctl is missing.

    any_thread=True also returns one off the main thread, for a caller whose forking thread
    lives as long as the child (an event loop thread that owns the child, e.g. p2pd's)."""
    prctl = _prctl()
    if prctl is None or not (any_thread or threading.current_thread() is threading.main_thread()):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nobody will send the signal
            os.kill(os.getpid(), sig)

    return preexec


def child_command(args: Sequence[str]) -> list[str]:
    """`args` as they should be started: unchanged where `die_with_parent` works from this
    thread, else a `python -m MODULE ...` (or `-c CODE`) command run under this module's
    watchdog. Other commands are returned unchanged: nothing can watch from inside them."""
    args = list(args)
    if pdeathsig_usable() or len(args) < 3 or args[1] not in ("-m", "-c"):
        return args
    return [args[0], "-m", __name__, str(os.getpid()), *args[1:]]


def watch_parent(parent_pid: int, grace: float = 10.0, period: float = 0.5) -> threading.Thread:
    """Start a daemon thread that ends this process once `parent_pid` is no longer its parent."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(period)
        os.kill(os.getpid(), signal.SIGTERM)  # the graceful path first: the process's own handlers
        time.sleep(grace)
        try:
            os.killpg(os.getpgid(0), signal.SIGKILL)  # still here: take the process group with us
        except (PermissionError, ProcessLookupError):
            os.kill(os.getpid(), signal.SIGKILL)

    thread = threading.Thread(target=watch, name="swarmllm-parent-watchdog", daemon=True)
    thread.start()
    return thread


def main(argv: Sequence[str]) -> None:
    """python -m swarmllm.lifeline PARENT_PID -m MODULE [ARGS...]  (or -c CODE [ARGS...])"""
    if len(argv) < 3 or argv[1] not in ("-m", "-c"):
        sys.exit("usage: python -m swarmllm.lifeline PARENT_PID -m MODULE [ARGS...] | -c CODE [ARGS...]")
    watch_parent(int(argv[0]))
    if argv[1] == "-m":
        sys.argv = [argv[2], *argv[3:]]
        runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
    else:
        sys.argv = ["-c", *argv[3:]]
        exec(compile(argv[2], "<string>", "exec"), {"__name__": "__main__"})


if __name__ == "__main__":
    main(sys.argv[1:])
