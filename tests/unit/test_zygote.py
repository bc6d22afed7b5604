"""The harness's zygote (harness/zygote.py): forked children behave as `python -m swarmllm.cli` processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import types

import psutil
import pytest

from swarmllm.harness.processes import ManagedProcess
from swarmllm.harness.zygote import Zygote

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the zygote forks (Linux)")


@pytest.fixture(scope="module")
def zygote():
    z = Zygote()
    yield z
    z._proc.kill()
    z._proc.wait(10)


def test_a_child_runs_the_cli_with_its_own_environment_folder_and_log(zygote, tmp_path):
    env = {**os.environ, "SWARMLLM_HOME": str(tmp_path / "home")}
    log = tmp_path / "id.log"
    child = zygote.spawn(["id", "--name", "probe", "--verbose"], env, log, cwd=str(tmp_path))
    assert child.wait(60) == 0, log.read_text()
    text = log.read_text()
    assert text.splitlines()[0].startswith("12D3KooW")          # stdout, the peer id
    assert str(tmp_path / "home") in text                         # stderr too; its SWARMLLM_HOME, not ours
    assert child.pid != os.getpid() and child.pid != zygote._proc.pid


def test_exit_codes_and_signals_are_reported(zygote, tmp_path):
    bad = zygote.spawn(["serve", "--no-such-flag"], dict(os.environ), tmp_path / "bad.log")
    assert bad.wait(60) == 2 and "unrecognized arguments" in (tmp_path / "bad.log").read_text()
    env = {**os.environ, "SWARMLLM_HOME": str(tmp_path / "home2")}
    server = zygote.spawn(["bootstrap", "--port", "0", "--no-lan", "--host", "127.0.0.1"], env, tmp_path / "b.log")
    deadline = time.monotonic() + 60
    while not (tmp_path / "b.log").exists() or "swarmllm-ready" not in (tmp_path / "b.log").read_text():
        assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "b.log").read_text()
        time.sleep(0.1)
    assert os.getsid(server.pid) == server.pid  # its own session, as ManagedProcess's children
    server.kill()
    assert server.wait(30) == -signal.SIGKILL
    with pytest.raises(subprocess.TimeoutExpired):
        zygote.spawn(["bootstrap", "--port", "0", "--no-lan", "--host", "127.0.0.1"], env,
                     tmp_path / "c.log").wait(0.5)


def _ignored_signals(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1], 16) for line in f if line.startswith("SigIgn:"))


def test_a_child_ignores_the_signals_a_fresh_interpreter_ignores(zygote, tmp_path):
    """Python starts with SIGPIPE (and SIGXFSZ) ignored: a child with SIGPIPE at its default died
    of the first write to a stream whose peer had been killed (the chaos run's nodes did)."""
    env = {**os.environ, "SWARMLLM_HOME": str(tmp_path / "home")}
    child = zygote.spawn(["bootstrap", "--port", "0", "--no-lan", "--host", "127.0.0.1"], env, tmp_path / "b.log")
    fresh = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(1)
        assert child.poll() is None, (tmp_path / "b.log").read_text()
        assert _ignored_signals(child.pid) & (1 << (signal.SIGPIPE - 1))
        assert _ignored_signals(child.pid) == _ignored_signals(fresh.pid)
    finally:
        fresh.kill()
        child.kill()
        child.wait(30)
        fresh.wait(10)


TORCH_THREADS_AFTER_FORK = """
import os, threading
from swarmllm.harness.zygote import _preload
_preload()
import torch
pid = os.fork()
if pid == 0:  # as a node: --num-threads set from its loading thread, then compute on its main thread
    loader = threading.Thread(target=torch.set_num_threads, args=(1,))
    loader.start()
    loader.join()
    os._exit(torch.get_num_threads())
print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def test_a_child_takes_the_torch_thread_count_it_sets_as_a_fresh_process_does():
    """A fresh process's main thread takes the count set from another thread at its first torch op;
    torch's own after-fork hook would fix it at the default in the zygote's children."""
    out = subprocess.run([sys.executable, "-c", TORCH_THREADS_AFTER_FORK], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "1"


EXIT_AS_THE_INTERPRETER = """
import atexit, os, runpy, sys, threading, time
from swarmllm.harness import zygote

def command(*args, **kwargs):  # stands for swarmllm.cli: leaves work to a thread and to atexit
    def late():
        time.sleep(0.5)
        print("thread done")
    threading.Thread(target=late).start()
    atexit.register(print, "atexit ran")
    sys.stdout.write("no newline")

runpy.run_module = command
pid = os.fork()
if pid == 0:
    zygote._child({"args": [], "env": dict(os.environ), "log": sys.argv[1], "cwd": os.getcwd()}, None, {})
print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def test_a_child_exits_as_the_interpreter_does(tmp_path):
    """Its command's non-daemon threads are waited for, atexit functions run, output is flushed."""
    log = tmp_path / "child.log"
    out = subprocess.run([sys.executable, "-c", EXIT_AS_THE_INTERPRETER, str(log)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.split()[-1] == "0", out.stderr
    assert log.read_text().splitlines() == ["no newlinethread done", "atexit ran"]


def test_a_child_given_an_earlier_childs_pid_is_not_taken_for_that_one_ended():
    """pids are reused (pid_max 32768 here; a suite run goes round it): the zygote reports an end before it
    forks a later child that gets the same pid, and that child is running until its own end is reported."""
    z = Zygote.__new__(Zygote)  # its bookkeeping only, fed the zygote's reports through a pipe
    z.changed, z._running, z._spawned, z.closed = threading.Condition(), {}, [], False
    read_end, write_end = os.pipe()
    z._proc = types.SimpleNamespace(stdout=open(read_end, "rb"))
    reader = threading.Thread(target=z._read, daemon=True)
    reader.start()
    reports = open(write_end, "wb", buffering=0)
    for message in ({"pid": 4242}, {"exit": 4242, "code": -9}, {"pid": 4242}):
        reports.write((json.dumps(message) + "\n").encode())
    with z.changed:
        assert z.changed.wait_for(lambda: len(z._spawned) == 2, 10)
    old, new = z._spawned
    assert old.poll() == -signal.SIGKILL and new.poll() is None
    reports.write(b'{"exit": 4242, "code": 0}\n')
    assert new.wait(10) == 0
    reports.close()
    reader.join(10)


def test_children_die_with_the_zygote(tmp_path):
    z = Zygote()
    env = {**os.environ, "SWARMLLM_HOME": str(tmp_path / "home")}
    child = z.spawn(["bootstrap", "--port", "0", "--no-lan", "--host", "127.0.0.1"], env, tmp_path / "b.log")
    time.sleep(1)
    z._proc.kill()
    z._proc.wait(10)
    deadline = time.monotonic() + 20
    while psutil.pid_exists(child.pid) and psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "a zygote's child outlived it"
        time.sleep(0.2)
    assert child.poll() is not None  # and its handle says so


def test_managed_processes_use_it_only_for_the_cli_under_a_matching_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SWARMLLM_ZYGOTE", "1")
    cli = ManagedProcess("cli", [sys.executable, "-m", "swarmllm.cli", "id"], tmp_path / "a.log")
    other = ManagedProcess("other", [sys.executable, "-c", "print(1)"], tmp_path / "b.log")
    assert cli._zygote_can_start(dict(os.environ)) and not other._zygote_can_start(dict(os.environ))
    assert not cli._zygote_can_start({**os.environ, "PYTHONPATH": "/elsewhere"})  # read at import: not forked
    monkeypatch.setenv("SWARMLLM_ZYGOTE", "0")
    assert not cli._zygote_can_start(dict(os.environ))
