"""Children die with their parent: through prctl's parent-death signal, or the watchdog.

A middle process starts a sleeping child the way the harness does, prints the child's pid
and is SIGKILLed; the child must be gone within seconds. The watchdog path (used off Linux
and from short-lived threads) is forced by starting the child from a thread.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

MIDDLE = textwrap.dedent("""
    import subprocess, sys, threading, time
    from swarmllm.lifeline import child_command, die_with_parent

    def spawn():
        child = subprocess.Popen(child_command([sys.executable, "-c", "import time; time.sleep(120)"]
                                               if {watchdog} else [sys.executable, "-m", "http.server", "0"]),
                                 preexec_fn=die_with_parent(), start_new_session=True,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(child.pid, flush=True)

    if {watchdog}:
        thread = threading.Thread(target=spawn)  # off the main thread: no prctl, the watchdog
        thread.start(); thread.join()
    else:
        spawn()
    time.sleep(120)
""")


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("watchdog", [False, True], ids=["pdeathsig", "watchdog"])
def test_child_dies_with_its_killed_parent(watchdog):
    if not watchdog and not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux only")
    middle = subprocess.Popen([sys.executable, "-c", MIDDLE.format(watchdog=watchdog)], stdout=subprocess.PIPE,
                              text=True)
    child = int(middle.stdout.readline())
    try:
        if watchdog:  # the child runs under `python -m swarmllm.lifeline PARENT -c ...`
            assert "swarmllm.lifeline" in psutil.Process(child).cmdline()
        time.sleep(0.5)
        assert not _gone(child, 0.1)
        middle.kill()
        middle.wait(5)
        assert _gone(child, 5), "the child outlived its SIGKILLed parent"
    finally:
        for pid in (child, middle.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
