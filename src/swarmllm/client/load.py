"""Load-aware hop prices: how many sessions a server is already running, believed with care.

Speed alone sends every session to the fastest chain: concurrent sessions pile onto it while a
parallel chain idles. So routing (routing.py) multiplies a hop's compute cost by
`1 + LOAD_WEIGHT * load(peer)`, where a server's load is the larger of
- what this client knows itself: the sessions it has open on that server now (trusted), and
- what the server's record claims (active sessions + queued steps / QUEUED_STEP_WEIGHT),
  believed up to `CLAIM_CAP` only.
A liar announcing 0 load gains nothing over an honest idle server: the sessions this client put
there count anyway, so it cannot attract every session. A claim of huge load only repels traffic
from its own writer, and the cap keeps that from pricing a server out for good. Step times the
client measured (estimates.py) already include the slowdown of a busy server, so they correct a
wrong claim in both directions as soon as a session runs there.

Pure: the caller owns the counts (swarm_client.py counts the sessions it opened per peer).
"""

from __future__ import annotations

from typing import Iterable, Mapping

from swarmllm.protocol import ServerRecord

LOAD_WEIGHT = 0.5         # one more concurrent session costs this share of a hop's compute (batched steps share)
CLAIM_CAP = 8.0           # the most load a record's claim alone can add
QUEUED_STEP_WEIGHT = 2.0  # queued steps per session of load (a session has about one step queued at a time)


def claimed_load(record: ServerRecord) -> float:
    """What the record says, capped: active sessions plus queued steps."""
    return min(record.active_sessions + record.queued_steps / QUEUED_STEP_WEIGHT, CLAIM_CAP)


def server_loads(records: Iterable[ServerRecord], opened: Mapping[str, int] | None = None) -> dict[str, float]:
    """Per peer, the load routing believes: max(sessions we opened there, its capped claim)."""
    opened = opened or {}
    return {r.peer_id: max(float(opened.get(r.peer_id, 0)), claimed_load(r)) for r in records}


def load_factor(load: float, weight: float = LOAD_WEIGHT) -> float:
    """The factor on a hop's compute cost for a server carrying `load` other sessions."""
    return 1.0 + weight * max(0.0, load)
