"""Time from `pip install` to a serving `swarmllm volunteer` on a fresh virtual environment.

Phases, each timed, with an empty pip cache (PIP_NO_CACHE_DIR=1) and a fresh state folder:
1. `python -m venv` and `pip install torch==2.13.0` (the CPU wheel, as the README says);
2. `pip install REPO` (swarmllm and its dependencies; our own pure-Python wheel is built, nothing
   is compiled);
3. a bootstrap peer starts (from the fresh environment);
4. `swarmllm volunteer --initial-peers BOOTSTRAP` runs until its ready line: it detects the machine,
   reads the swarm, installs the planned model's package (none is on disk: the environment, HOME
   and the caches are fresh), loads its span, measures it and announces it.
Reported: seconds per phase, total from the first pip command to serving, and what the volunteer
chose. This measures this machine and its network to the package registries, stated in the JSON.

    python benchmarks/volunteer_first_run.py [--repo PATH] [--keep]
Writes benchmarks/results/volunteer_first_run.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def timed(args, env, timeout=1800) -> float:
    began = time.perf_counter()
    subprocess.run(args, env=env, check=True, timeout=timeout, stdout=subprocess.DEVNULL)
    return time.perf_counter() - began


def wait_ready(proc: subprocess.Popen, log: Path, timeout: float) -> dict:
    from swarmllm.harness.processes import READY_MARKER

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith(READY_MARKER):
                return json.loads(line[len(READY_MARKER):])
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    raise TimeoutError(f"not ready in {timeout} s:\n{log.read_text()[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", default=str(HERE.parent))
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="volunteer-first-run-"))
    # A fresh HOME too: models assembled or downloaded by earlier runs (~/.cache) must not count as on disk.
    (work / "user").mkdir()
    env = {**os.environ, "PIP_NO_CACHE_DIR": "1", "SWARMLLM_HOME": str(work / "home"), "HOME": str(work / "user"),
           "XDG_CACHE_HOME": str(work / "user" / ".cache"), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("SWARMLLM_MODELS_DIR", None)
    env.pop("SWARMLLM_CACHE", None)
    env.pop("PYTHONPATH", None)
    venv = work / "venv"
    python, cli = str(venv / "bin" / "python"), [str(venv / "bin" / "python"), "-m", "swarmllm.cli"]
    phases: dict[str, float] = {}
    procs: list[subprocess.Popen] = []
    try:
        began = time.perf_counter()
        phases["venv"] = timed([sys.executable, "-m", "venv", str(venv)], env)
        phases["pip_install_torch"] = timed([python, "-m", "pip", "install", "-q", "torch==2.13.0"], env)
        phases["pip_install_swarmllm"] = timed([python, "-m", "pip", "install", "-q", args.repo], env)
        installed = time.perf_counter()
        boot_log, vol_log = work / "bootstrap.log", work / "volunteer.log"
        procs.append(subprocess.Popen(cli + ["bootstrap", "--host", "127.0.0.1", "--port", "0", "--no-lan"],
                                      env=env, stdout=boot_log.open("w"), stderr=subprocess.STDOUT))
        boot = wait_ready(procs[0], boot_log, 120)
        phases["bootstrap"] = time.perf_counter() - installed
        started = time.perf_counter()
        procs.append(subprocess.Popen(cli + ["volunteer", "--initial-peers", ",".join(boot["addresses"]),
                                             "--no-lan", "--host", "127.0.0.1"],
                                      env=env, stdout=vol_log.open("w"), stderr=subprocess.STDOUT))
        ready = wait_ready(procs[1], vol_log, 900)
        phases["volunteer_to_serving"] = time.perf_counter() - started
        total = time.perf_counter() - began
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
              "pip_cache": "empty (PIP_NO_CACHE_DIR=1)", "phases_seconds": {k: round(v, 1) for k, v in phases.items()},
              "pip_install_to_serving_seconds": round(total - phases["venv"], 1),
              "served": {k: ready.get(k) for k in ("model", "start", "end", "throughput", "startup_seconds")}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "volunteer_first_run.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = "\n".join(f"| {k} | {v:.1f} |" for k, v in result["phases_seconds"].items())
    (RESULTS / "volunteer_first_run.md").write_text(
        "# From pip install to a serving volunteer (empty pip cache)\n\n| phase | seconds |\n|---|---|\n" + rows
        + f"\n| **pip install to serving** | **{result['pip_install_to_serving_seconds']:.1f}** |\n\n"
        f"Served: {result['served']}\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
