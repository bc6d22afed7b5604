"""A real swarm for integration tests: a bootstrap peer and 3 node processes on loopback.

The swarm is started once per test session by `swarm3` (and stopped, with every process it
started, at the end), and shared by the modules that only read it: starting one costs ~15 s of a
2-core machine. Tests that break nodes or leave records behind start their own (a module can
override `swarm3` with a module-scoped fixture of its own, as test_hostile_records.py does).
"""

from __future__ import annotations

import pytest

from swarmllm.harness.local_swarm import LocalSwarm, even_spans

N_BLOCKS = 30  # smollm2-135m


@pytest.fixture(scope="session")  # (tests/integration is no package: "package" would mean the same)
def swarm3(tmp_path_factory):
    swarm = LocalSwarm("smollm2-135m", even_spans(N_BLOCKS, 3), log_dir=tmp_path_factory.mktemp("swarm3"))
    swarm.start(timeout=180)
    try:
        yield swarm
    finally:
        swarm.stop()
