"""Protocol versions in one real swarm: compatible ones interoperate, incompatible ones refuse clearly.

Three builds of this code, each run as real node processes: this one (its range [MIN_PROTOCOL_VERSION,
PROTOCOL_VERSION], v8 to v9 today), an "old" copy that speaks MIN_PROTOCOL_VERSION only (as the release before
the last optional fields did) and a "newest" copy whose MIN_PROTOCOL_VERSION is two above ours (a release that
changed a meaning). Each copy is the source tree under tmp_path with its constants patched, run with PYTHONPATH
pointing at it.

- This node [0, 15) and the old node [15, 30) serve the model together: greedy tokens through them equal one
  process's, raw sessions negotiate the highest common version, and sampling with penalties (whose ring fields
  are v9's) is decoded the plain way through them, with the same tokens.
- The newest node, also on [15, 30), is never routed through, and refuses a session of ours with
  `version_mismatch` saying this side must upgrade; our node refuses a newer OpenSession it cannot even parse
  the same way.
- With the old node gone, the client's error names both versions and says to upgrade.
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
from swarmllm.client.generation import GenerationOptions, generate_text
from swarmllm.client.routing import IncompatibleVersionsError
from swarmllm.client.swarm_client import SwarmClient
from swarmllm.engine.sampling import SamplingParams
from swarmllm.harness.local_swarm import LocalSwarm
from swarmllm.protocol import (
    MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, SESSION_HANDLER, ErrorReply, OpenSession, ServerState, SessionOpened, decode_frame, encode_frame,
)
from swarmllm.protocol.codec import LAYOUT_JSON

pytestmark = pytest.mark.integration

MODEL, N_BLOCKS = "smollm2-135m", 30
PROMPT = "Write a short story about a robot who learns to paint."
GREEDY = SamplingParams(max_new_tokens=8)
PENALIZED = SamplingParams(temperature=0.6, seed=4, repetition_penalty=1.3, presence_penalty=0.5, max_new_tokens=12)


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
    low, high = MIN_PROTOCOL_VERSION, PROTOCOL_VERSION
    assert low < high, "this test wants a range of two versions at least"
    top = high + 2
    ours_text, old_text, top_text = f"v{low} to v{high}", f"v{low}", f"v{top}"
    old_build = build(tmp_path, "old", low, low, "0.1.0")
    newest_build = build(tmp_path, "newest", top, top, "0.3.0")
    swarm = LocalSwarm(MODEL, [], log_dir=tmp_path / "logs")
    try:
        swarm.start(timeout=120)
        one_thread = ["--num-threads", "1"]
        ours = swarm.add_node(0, 15, name="ours", extra_args=one_thread)
        old = swarm.add_node(15, 30, name="old", extra_args=one_thread, program=program(old_build))
        newest = swarm.add_node(15, 30, name="newest", extra_args=one_thread, program=program(newest_build))
        swarm.wait_ready([ours, old, newest], timeout=180)
        peer = {p.name: p.ready["peer_id"] for p in (ours, old, newest)}
        reference = generate_text(MODEL, PROMPT, GREEDY)
        penalized_reference = generate_text(MODEL, PROMPT, PENALIZED)

        with SwarmClient.connect(swarm.initial_peers, keep_state=False) as client:
            records = wait_for(lambda: (lambda r: r if set(peer.values()) <= set(r) else None)(records_by_peer(client)),
                               30, "the three nodes' records did not show")
            # Each node runs the build it was given (its record says so).
            assert records[peer["ours"]].protocol_range == (low, high)
            assert records[peer["old"]].protocol_range == (low, low)
            assert records[peer["old"]].software_version == "0.1.0"
            assert records[peer["newest"]].protocol_range == (top, top)

            # Ours and the old node serve the model together; the newest node is never on the route.
            result = generate_text(MODEL, PROMPT, GREEDY, client=client)
            assert result.token_ids == reference.token_ids and result.text == reference.text
            assert [hop.peer_id for hop in result.route] == [peer["ours"], peer["old"]]
            # The old last server cannot read a ring's penalties: the client samples, the same tokens come out.
            penalized = generate_text(MODEL, PROMPT, GenerationOptions(sampling=PENALIZED), client=client)
            assert penalized.token_ids == penalized_reference.token_ids
            assert penalized.ring is not None and penalized.ring.plain_fallback

            # Raw sessions: the highest version both ends speak.
            opened = raw_open(client, peer["old"], open_frame("a" * 16, 15, 30))
            assert isinstance(opened, SessionOpened) and opened.protocol_version == low
            opened = raw_open(client, peer["ours"], open_frame("b" * 16, 0, 15))
            assert isinstance(opened, SessionOpened) and opened.protocol_version == high
            opened = raw_open(client, peer["ours"], open_frame("c" * 16, 0, 15, protocol_version=low))
            assert isinstance(opened, SessionOpened) and opened.protocol_version == low

            # The newest node refuses our range and says that we must upgrade.
            refused = raw_open(client, peer["newest"], open_frame("d" * 16, 15, 30))
            assert isinstance(refused, ErrorReply) and refused.code == "version_mismatch"
            assert refused.message == (f"this node speaks protocol {top_text} and the client {ours_text}: the client "
                                       "must upgrade (pip install -U swarmllm)")
            # Ours refuses a newer OpenSession carrying a field it does not know: a version error, not "malformed".
            header = {**json.loads(OpenSession(session_id="e" * 16, model_id=MODEL, start=0, end=15, max_length=8,
                                               protocol_version=top, min_protocol_version=top).model_dump_json()),
                      "a_field_of_the_future": True}
            raw = json.dumps(header).encode()
            refused = raw_open(client, peer["ours"], LAYOUT_JSON + struct.pack("<I", len(raw)) + raw)
            assert isinstance(refused, ErrorReply) and refused.code == "version_mismatch"
            assert refused.message == (f"this node speaks protocol {ours_text} and the client {top_text}: upgrade "
                                       "this node (pip install -U swarmllm)")

        # The old node leaves: only the newest node serves [15, 30) now.
        old.terminate()
        old.finish(time.monotonic() + 15)
        with SwarmClient.connect(swarm.initial_peers, keep_state=False) as client:
            wait_for(lambda: (lambda r: r.get(peer["old"]) is None or r[peer["old"]].state != ServerState.ONLINE)(
                records_by_peer(client)), 30, "the old node still announced itself online")
            with pytest.raises(IncompatibleVersionsError) as error:
                generate_text(MODEL, PROMPT, GREEDY, client=client)
            assert str(error.value) == (f"no route to blocks [15, 30) of {MODEL}: its servers speak protocol {top_text} "
                                        f"(swarmllm 0.3.0) and this client {ours_text} (swarmllm "
                                        f"{swarmllm.__version__}): upgrade swarmllm (pip install -U swarmllm)")
        assert ours.alive and newest.alive
    finally:
        swarm.stop()
