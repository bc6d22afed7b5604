"""Two protocol versions in one real swarm: compatible ones interoperate, incompatible ones refuse clearly.

Three builds of this code, each run as real node processes: this one (protocol v8, swarmllm
as it is), a "v9" copy that only raised PROTOCOL_VERSION (what a release that adds optional
fields does: its range is v8 to v9) and a "v10" copy that raised MIN_PROTOCOL_VERSION to 10 (a
release that changed a meaning). Each copy is the source tree under tmp_path with its
constants patched, run with PYTHONPATH pointing at it.

- This node [0, 15) and the v9 node [15, 30) serve the model together: greedy tokens through
  them equal one process's, and raw sessions negotiate the highest common version.
- The v10 node, also on [15, 30), is never routed through, and refuses a session of ours with
  `version_mismatch` saying this side must upgrade; our node refuses a v10 OpenSession it cannot
  even parse the same way.
- With the v9 node gone, the client's error names both versions and says to upgrade.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import sys
import time
from pathlib import Path

import pytest

import swarmllm
from swarmllm.client.generation import generate_text
from swarmllm.client.routing import IncompatibleVersionsError
from swarmllm.client.swarm_client import SwarmClient
from swarmllm.engine.sampling import SamplingParams
from swarmllm.harness.local_swarm import LocalSwarm
from swarmllm.protocol import (
    SESSION_HANDLER, ErrorReply, OpenSession, ServerState, SessionOpened, decode_frame, encode_frame,
)
from swarmllm.protocol.codec import LAYOUT_JSON

pytestmark = pytest.mark.integration

MODEL, N_BLOCKS = "smollm2-135m", 30
PROMPT = "Write a short story about a robot who learns to paint."
GREEDY = SamplingParams(max_new_tokens=8)


def build(tmp_path: Path, name: str, protocol_version: int, min_protocol_version: int, version: str) -> Path:
    """A copy of this swarmllm under tmp_path/name speaking [min_protocol_version, protocol_version] and
    calling itself `version`; returns the folder to put on PYTHONPATH."""
    root = tmp_path / name
    shutil.copytree(Path(swarmllm.__file__).parent, root / "swarmllm", ignore=shutil.ignore_patterns("__pycache__"))
    messages = root / "swarmllm" / "protocol" / "messages.py"
    text, n = re.subn(r"^PROTOCOL_VERSION = \d+", f"PROTOCOL_VERSION = {protocol_version}",
                      messages.read_text(), flags=re.M)
    text, m = re.subn(r"^MIN_PROTOCOL_VERSION = \d+", f"MIN_PROTOCOL_VERSION = {min_protocol_version}", text,
                      flags=re.M)
    init = root / "swarmllm" / "__init__.py"
    init_text, k = re.subn(r'^__version__ = ".*"', f'__version__ = "{version}"', init.read_text(), flags=re.M)
    assert n == m == k == 1, "the version constants moved: update this test's patterns"
    messages.write_text(text)
    init.write_text(init_text)
    return root


def program(pythonpath: Path) -> list[str]:
    return ["env", f"PYTHONPATH={pythonpath}", sys.executable, "-m", "swarmllm.cli"]


def raw_open(client: SwarmClient, peer_id: str, frame: bytes):
    """Send one OpenSession frame to `peer_id` on a new session stream; its reply."""
    async def run():
        stream = await client.swarm.open_stream(peer_id, SESSION_HANDLER)
        try:
            await stream.send(frame)
            reply, _ = decode_frame(await stream.recv())
            return reply
        finally:
            stream.close()
    return client.loop.run(run())


def open_frame(session_id: str, start: int, end: int, **versions) -> bytes:
    return encode_frame(OpenSession(session_id=session_id, model_id=MODEL, start=start, end=end, max_length=8,
                                    **versions))


def records_by_peer(client: SwarmClient) -> dict:
    return {r.peer_id: r for r in client.find_servers(MODEL, N_BLOCKS)}


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout:.0f} s")
        time.sleep(0.5)


def test_two_versions_interoperate_and_an_incompatible_one_refuses_clearly(tmp_path):
    v9 = build(tmp_path, "v9", 9, 8, "0.2.0")
    v10 = build(tmp_path, "v10", 10, 10, "0.3.0")
    swarm = LocalSwarm(MODEL, [], log_dir=tmp_path / "logs")
    try:
        swarm.start(timeout=120)
        one_thread = ["--num-threads", "1"]
        ours = swarm.add_node(0, 15, name="v8", extra_args=one_thread)
        newer = swarm.add_node(15, 30, name="v9", extra_args=one_thread, program=program(v9))
        newest = swarm.add_node(15, 30, name="v10", extra_args=one_thread, program=program(v10))
        swarm.wait_ready([ours, newer, newest], timeout=180)
        peer = {p.name: p.ready["peer_id"] for p in (ours, newer, newest)}
        reference = generate_text(MODEL, PROMPT, GREEDY)

        with SwarmClient.connect(swarm.initial_peers, keep_state=False) as client:
            records = wait_for(lambda: (lambda r: r if set(peer.values()) <= set(r) else None)(records_by_peer(client)),
                               30, "the three nodes' records did not show")
            # Each node runs the build it was given (its record says so).
            assert records[peer["v8"]].protocol_range == (8, 8)
            assert records[peer["v9"]].protocol_range == (8, 9)
            assert records[peer["v9"]].software_version == "0.2.0"
            assert records[peer["v10"]].protocol_range == (10, 10)

            # v8 and v9 serve the model together; the v10 node is never on the route.
            result = generate_text(MODEL, PROMPT, GREEDY, client=client)
            assert result.token_ids == reference.token_ids and result.text == reference.text
            assert [hop.peer_id for hop in result.route] == [peer["v8"], peer["v9"]]

            # Raw sessions: the highest version both ends speak.
            opened = raw_open(client, peer["v9"], open_frame("a" * 16, 15, 30))
            assert isinstance(opened, SessionOpened) and opened.protocol_version == 8
            opened = raw_open(client, peer["v9"], open_frame("b" * 16, 15, 30, protocol_version=9))
            assert isinstance(opened, SessionOpened) and opened.protocol_version == 9
            opened = raw_open(client, peer["v8"], open_frame("c" * 16, 0, 15, protocol_version=9))
            assert isinstance(opened, SessionOpened) and opened.protocol_version == 8

            # The v10 node refuses our range and says that we must upgrade.
            refused = raw_open(client, peer["v10"], open_frame("d" * 16, 15, 30))
            assert isinstance(refused, ErrorReply) and refused.code == "version_mismatch"
            assert refused.message == ("this node speaks protocol v10 and the client v8: the client must upgrade "
                                       "(pip install -U swarmllm)")
            # Ours refuses a v10 OpenSession carrying a field it does not know: a version error, not "malformed".
            header = {**json.loads(OpenSession(session_id="e" * 16, model_id=MODEL, start=0, end=15, max_length=8,
                                               protocol_version=10, min_protocol_version=10).model_dump_json()),
                      "a_field_of_v10": True}
            raw = json.dumps(header).encode()
            refused = raw_open(client, peer["v8"], LAYOUT_JSON + struct.pack("<I", len(raw)) + raw)
            assert isinstance(refused, ErrorReply) and refused.code == "version_mismatch"
            assert refused.message == ("this node speaks protocol v8 and the client v10: upgrade this node "
                                       "(pip install -U swarmllm)")

        # The v9 node leaves: only the v10 node serves [15, 30) now.
        newer.terminate()
        newer.finish(time.monotonic() + 15)
        with SwarmClient.connect(swarm.initial_peers, keep_state=False) as client:
            wait_for(lambda: (lambda r: r.get(peer["v9"]) is None or r[peer["v9"]].state != ServerState.ONLINE)(
                records_by_peer(client)), 30, "the v9 node still announced itself online")
            with pytest.raises(IncompatibleVersionsError) as error:
                generate_text(MODEL, PROMPT, GREEDY, client=client)
            assert str(error.value) == (f"no route to blocks [15, 30) of {MODEL}: its servers speak protocol v10 "
                                        f"(swarmllm 0.3.0) and this client v8 (swarmllm {swarmllm.__version__}): "
                                        f"upgrade swarmllm (pip install -U swarmllm)")
        assert ours.alive and newest.alive
    finally:
        swarm.stop()
