"""A node started without --blocks and --num-blocks sizes its span by its speed relative to
the swarm's (partitioner.node_span_length): the announced stage times of the others set it."""

from __future__ import annotations

import pytest

from swarmllm.harness.local_swarm import LocalSwarm

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("announced, expected", [
    pytest.param("1000000000", (10, 11), marks=pytest.mark.extended),  # the others' stages take ~0 s: one block is already slower than that
    ("0.001", (0, 30)),        # the others take 1000 s per token: this node takes all it can hold
])
def test_span_length_follows_the_swarms_stage_times(tmp_path, announced, expected):
    with LocalSwarm("smollm2-135m", [], log_dir=tmp_path) as swarm:
        first = swarm.add_node(0, 10, name="first", extra_args=("--throughput", announced))
        swarm.wait_ready([first])
        joiner = swarm.add_node(None, None, name="joiner", extra_args=("--rebalance-period", "0"))
        swarm.wait_ready([joiner])
        assert (joiner.ready["start"], joiner.ready["end"]) == expected
