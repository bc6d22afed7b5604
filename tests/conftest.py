"""Shared fixtures: the bundled model, and real local swarms started as processes."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HIVEMIND_LOGLEVEL", "WARNING")

BUNDLED_MODEL = "smollm2-135m"


@pytest.fixture(scope="session")
def artifacts_dir(tmp_path_factory):
    path = os.environ.get("SWARMLLM_ARTIFACTS")
    if path:
        os.makedirs(path, exist_ok=True)
        return path
    return str(tmp_path_factory.mktemp("artifacts"))
