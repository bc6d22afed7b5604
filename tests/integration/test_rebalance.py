"""Nodes without --blocks choose their span, and re-cover a hole when a node leaves."""

from __future__ import annotations

import signal
import time

import pytest

from swarmllm.client.routing import missing_spans, usable
from swarmllm.client.swarm_client import SwarmClient
from swarmllm.harness.local_swarm import LocalSwarm

pytestmark = pytest.mark.integration

AUTO = ("--num-blocks", "10", "--rebalance-period", "2")


@pytest.mark.extended  # ~47 s: four nodes one after another; the default run keeps the choice of blocks and spans
# (unit/test_server_sessions.py, integration/test_join.py: a node fills the gap) and the span length by speed
# (integration/test_auto_span_length.py); moving to re-cover a lost span is in -m extended only
def test_auto_nodes_fill_gaps_then_recover_a_lost_span(tmp_path):
    with LocalSwarm("smollm2-135m", [], log_dir=tmp_path) as swarm:
        nodes = []
        for i in range(4):  # one at a time, so each sees the others' records
            node = swarm.add_node(None, None, name=f"auto{i}", extra_args=AUTO)
            swarm.wait_ready([node])
            time.sleep(0.5)
            nodes.append(node)
        spans = [(n.ready["start"], n.ready["end"]) for n in nodes]
        assert sorted(spans[:3]) == [(0, 10), (10, 20), (20, 30)]  # gaps are filled first

        with SwarmClient.connect(swarm.initial_peers) as client:
            def online():
                return [r for r in client.find_servers("smollm2-135m", 30) if usable(r)]
            spare = spans[3]
            victim = next(n for n, span in zip(nodes[:3], spans[:3]) if span != spare)
            hole = (victim.ready["start"], victim.ready["end"])
            swarm.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                records = [r for r in online() if r.peer_id != victim.ready["peer_id"]]
                if not missing_spans(30, records):
                    break
                time.sleep(1)
            assert not missing_spans(30, records), f"hole {hole} was not re-covered: {records}"
            mover = next(r for r in records if (r.start, r.end) == hole)
            # One of the two nodes that shared the spare's span moved (either may); nobody else did.
            twins = {n.ready["peer_id"] for n, span in zip(nodes, spans) if span == spare}
            assert mover.peer_id in twins
            moved = [r for r in records if (r.start, r.end) != dict(
                (n.ready["peer_id"], s) for n, s in zip(nodes, spans))[r.peer_id]]
            assert [r.peer_id for r in moved] == [mover.peer_id]
            # And no flapping: a few rebalance periods later everyone is still where they were.
            placement = sorted((r.peer_id, r.start, r.end) for r in records)
            time.sleep(5)  # 2.5 rebalance periods
            later = sorted((r.peer_id, r.start, r.end) for r in online() if r.peer_id != victim.ready["peer_id"])
            assert later == placement
