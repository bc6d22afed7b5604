"""A real swarm for integration tests: a bootstrap peer and 3 node processes on loopback.

The swarm is started once per module by `swarm3` (and stopped, with every process it
started, at the end); tests that break nodes start their own.
"""

from __future__ import annotations

import pytest

from swarmllm.harness.local_swarm import LocalSwarm, even_spans

N_BLOCKS = 30  # smollm2-135m


@pytest.fixture(scope="module")
def swarm3(tmp_path_factory):
    swarm = LocalSwarm("smollm2-135m", even_spans(N_BLOCKS, 3), log_dir=tmp_path_factory.mktemp("swarm3"))
    swarm.start(timeout=180)
    try:
        yield swarm
    finally:
        swarm.stop()
