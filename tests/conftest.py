"""Shared fixtures: the bundled model, and real local swarms started as processes."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HIVEMIND_LOGLEVEL", "WARNING")
# Swarm processes are forked from one that imported torch and hivemind once (harness/zygote.py): a
# 3-node swarm starts in ~5 s instead of ~11 on 2 cores. SWARMLLM_ZYGOTE=0 starts each as before.
os.environ.setdefault("SWARMLLM_ZYGOTE", "1")
if "SWARMLLM_HOME" not in os.environ:
    # Nodes keep their identities in the state folder by default: tests (and the processes
    # they start, which inherit this) use a throwaway one, not the user's.
    os.environ["SWARMLLM_HOME"] = tempfile.mkdtemp(prefix="swarmllm-test-home-")
    atexit.register(shutil.rmtree, os.environ["SWARMLLM_HOME"], True)

BUNDLED_MODEL = "smollm2-135m"


@pytest.fixture(scope="session")
def artifacts_dir(tmp_path_factory):
    path = os.environ.get("SWARMLLM_ARTIFACTS")
    if path:
        os.makedirs(path, exist_ok=True)
        return path
    return str(tmp_path_factory.mktemp("artifacts"))
