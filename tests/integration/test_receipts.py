"""Signed step receipts in a real swarm (issue 12, point 4): a generation leaves one verified receipt
per step per span in the client's SQLite store, `swarmllm audit` shows them, every node's work log
holds the same steps, and a node that lies in its receipts is treated as a bad peer: the session
fails over and the greedy text is still the single-process reference.

Swarm: three honest nodes [0, 10), [10, 20), [20, 30), then a hostile one (tests/hostile/
receipt_liar.py) on [20, 30) that computes honestly but lies in its receipts: in its first session
about its output hash, in its second with a broken signature. Sessions are sent through it by
planning without the honest [20, 30) node (the second time although it is banned); failover
replans freely.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from swarmllm.client.generation import ClientModel, generate_text
from swarmllm.client.receipts import ReceiptStore, list_sessions, session_receipts
from swarmllm.client.routing import plan_chain
from swarmllm.client.swarm_client import SwarmClient
from swarmllm.engine.generation import generate
from swarmllm.engine.sampling import SamplingParams
from swarmllm.harness.local_swarm import LocalSwarm
from swarmllm.protocol.receipts import verify_receipt
from swarmllm.server.work_log import default_work_log_path, read_work_log

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m"
PROMPT = "Name three rivers."
GREEDY = SamplingParams(max_new_tokens=12)
SPANS = [(0, 10), (10, 20), (20, 30)]
LIAR = [sys.executable, str(Path(__file__).parents[1] / "hostile" / "receipt_liar.py"), "output-hash,signature"]


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    s = LocalSwarm(MODEL, SPANS, log_dir=tmp_path_factory.mktemp("receipts"))
    s.start(timeout=240)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def liar(swarm) -> str:
    """The hostile node (joins after the honest test, so that nothing else routes through it); its peer id."""
    node = swarm.add_node(20, 30, name="liar", program=LIAR)
    swarm.wait_ready([node], timeout=240)
    return peer(node)


@pytest.fixture(scope="module")
def reference():
    return generate_text(MODEL, PROMPT, GREEDY)


def peer(node) -> str:
    return node.ready["peer_id"]


def test_a_generation_leaves_one_verified_receipt_per_step_per_span(swarm, reference, tmp_path):
    home = tmp_path / "client-home"
    env = {**os.environ, "SWARMLLM_HOME": str(home)}
    honest = {peer(node) for node in swarm.nodes[:3]}
    out = subprocess.run([sys.executable, "-m", "swarmllm.cli", "generate", "--model", MODEL, "--initial-peers",
                          ",".join(swarm.initial_peers), "--max-new-tokens", str(GREEDY.max_new_tokens), "--json",
                          "--ring", PROMPT], capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert {hop["peer_id"] for hop in result["route"]} == honest
    assert result["token_ids"] == reference.token_ids and result["decoding"] == "ring"

    audit = subprocess.run([sys.executable, "-m", "swarmllm.cli", "audit", "--json"], capture_output=True, text=True,
                           timeout=60, env=env)
    (session,) = json.loads(audit.stdout)
    steps = len(reference.token_ids)  # the prompt's step and one per token fed back (a ring's last is not)
    assert (session["model_id"], session["steps"], session["receipts"], session["peers"]) == \
        (MODEL, steps, 3 * steps, 3)
    shown = subprocess.run([sys.executable, "-m", "swarmllm.cli", "audit", session["session_id"][:8], "--json"],
                           capture_output=True, text=True, timeout=60, env=env)
    receipts = json.loads(shown.stdout)
    table = subprocess.run([sys.executable, "-m", "swarmllm.cli", "audit", session["session_id"][:8]],
                           capture_output=True, text=True, timeout=60, env=env).stdout
    assert table.count(" ok ") == 3 * steps and "BAD" not in table

    by_step: dict[int, list[dict]] = {}
    for receipt in receipts:
        by_step.setdefault(receipt["step_id"], []).append(receipt)
    assert all(r["signature_valid"] for r in receipts) and len(by_step) == steps
    covered = []
    for step in by_step.values():
        assert [tuple(r["span"]) for r in step] == SPANS and {r["peer_id"] for r in step} == honest
        assert len({(r["start_position"], r["positions"]) for r in step}) == 1
        assert all(a["output_hash"] == b["input_hash"] for a, b in zip(step, step[1:]))  # what A sent, B got
        covered.append((step[0]["start_position"], step[0]["positions"]))
    covered.sort()
    assert covered[0][0] == 0 and all(a + n == b for (a, n), (b, _) in zip(covered, covered[1:]))

    # Every node logged the steps it computed, for this client, with the hashes it signed.
    stored = session_receipts(session["session_id"], home / "receipts.sqlite")
    for node in swarm.nodes[:3]:
        mine = [r.receipt() for r in stored if r.peer_id == peer(node)]
        logged = _logged(peer(node), mine[0].session_id, len(mine))
        assert [(w.step_id, w.input_hash, w.output_hash) for w in logged] == \
            [(r.step_id, r.input_hash, r.output_hash) for r in mine]
        # hashes and sizes only: 4 bytes a value (float32) or 2 (a bfloat16 machine's lossless wire; a ring
        # token's embedding is hashed as float32 bytes)
        sizes = lambda w: (4 * 576 * w.positions, 2 * 576 * w.positions)  # noqa: E731
        assert all(w.output_bytes in sizes(w) and w.input_bytes in sizes(w) for w in logged)


def _plan_through(client, liar: str, exclude: list[str], wait: float = 20.0):
    """A chain ending at the liar (its record may take a moment to reach the client), bans or not."""
    deadline = time.monotonic() + wait
    while True:
        records = client.find_servers(MODEL, 30)
        if any(r.peer_id == liar for r in records) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    chain = plan_chain(MODEL, 30, records, exclude=exclude)
    assert chain[-1].peer_id == liar
    return chain


def _logged(peer_id: str, session_id: str, rows: int, wait: float = 10.0):
    """The node's work-log rows of one session, once `rows` of them are committed (it writes every second)."""
    deadline = time.monotonic() + wait
    while True:
        logged = read_work_log(default_work_log_path(peer_id), session_id)
        if len(logged) >= rows or time.monotonic() > deadline:
            return logged
        time.sleep(0.2)


@pytest.fixture(scope="module")
def client(swarm, tmp_path_factory):
    with SwarmClient.connect(swarm.initial_peers, keep_state=False) as c:
        c.receipts = ReceiptStore(tmp_path_factory.mktemp("client") / "receipts.sqlite")
        yield c


@pytest.mark.parametrize("lie", ["output-hash", "signature"])
def test_a_node_lying_in_its_receipts_is_banned_and_routed_around(swarm, liar, client, reference, lie):
    honest_tail = peer(swarm.nodes[2])
    model = ClientModel.load(MODEL)
    ids = model.prompt_ids(PROMPT)
    length = len(ids) + GREEDY.max_new_tokens
    through_liar = _plan_through(client, liar, exclude=[honest_tail])
    with client.open_session(MODEL, 30, length, chain=through_liar) as session:
        result = generate(model.head, model.tokenizer, session.forward, ids, GREEDY, length)
        failovers = session.failovers
        session_id = session.session.session_id
    assert result.token_ids == reference.token_ids
    assert failovers and failovers[0].code == "bad_receipt" and failovers[0].peer_ids == [liar]
    assert [link.peer_id for link in session.chain][-1] == honest_tail
    assert client.reputation.is_banned(liar) and client.reputation.record(liar).mismatches >= 1
    assert liar not in {link.peer_id for link in client.plan(MODEL, 30)}  # a ping does not lift this ban
    client.receipts.flush()
    stored = session_receipts(session_id, client.receipts.path)
    assert stored and liar not in {r.peer_id for r in stored}  # nothing it signed was accepted
    for r in stored:
        verify_receipt(r.receipt(), r.peer_id)
    assert any(s.session_id == session_id for s in list_sessions(client.receipts.path))
