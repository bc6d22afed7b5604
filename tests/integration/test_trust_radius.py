"""Trust radii per request (issue 13, point 5) on a real swarm of three owners' machines.

Nodes: F1 [0, 15) and F2 [25, 30) belong to a friend (their records carry certificates signed by the
friend's owner key), S [15, 30) to a stranger. The client has an owner key of its own, no machine,
and trusts the friend. So: "local" covers nothing; "trusted" lacks [15, 25); "trusted+public" widens
to public; and the privacy rule (default: the narrowest radius that can serve the ends) puts the
friend's servers at both ends of the chain, the stranger only in the middle, with the text equal to
the single-process reference. Radii are decided from the certificates alone (client/radius.py).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from swarmllm.client.generation import ClientModel, GenerationOptions, Generator, generate_text
from swarmllm.client.swarm_client import OutsideRadiusError, SwarmClient
from swarmllm.engine.sampling import SamplingParams
from swarmllm.harness.local_swarm import LocalSwarm
from swarmllm.owners import OwnerKey

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m"
PROMPT = "Name three rivers."
GREEDY = SamplingParams(max_new_tokens=6)


@pytest.fixture(scope="module")
def owners(tmp_path_factory):
    folder = tmp_path_factory.mktemp("owners")
    keys = {}
    for name in ("me", "friend", "stranger"):
        keys[name] = OwnerKey.generate()
        keys[name].save(folder / f"{name}.key")
    return folder, keys


@pytest.fixture(scope="module")
def swarm(owners, tmp_path_factory):
    folder, _ = owners
    s = LocalSwarm(MODEL, [], log_dir=tmp_path_factory.mktemp("radius"))
    s.start(timeout=60)
    try:
        nodes = {name: s.add_node(a, b, name=name, extra_args=["--owner-key", str(folder / f"{owner}.key")])
                 for name, (a, b, owner) in {"f1": (0, 15, "friend"), "s": (15, 30, "stranger"),
                                             "f2": (25, 30, "friend")}.items()}
        s.wait_ready(list(nodes.values()), timeout=240)
        s.named = {name: node.ready["peer_id"] for name, node in nodes.items()}
        yield s
    finally:
        s.stop()


@pytest.fixture()
def client(swarm, owners):
    _, keys = owners
    with SwarmClient.connect(swarm.initial_peers, keep_state=False) as c:
        c.owner_id = keys["me"].owner_id
        c.trust_loader = lambda: frozenset({keys["friend"].owner_id})
        yield c


def generate(client, **options):
    model = ClientModel.load(MODEL)
    with Generator.swarm(model, client).start(model.prompt_ids(PROMPT),
                                               GenerationOptions(sampling=GREEDY, **options)) as run:
        for _ in run:
            pass
    return run.result()


def test_a_radius_that_cannot_serve_names_itself_and_the_blocks(client):
    with pytest.raises(OutsideRadiusError, match=r"radius 'trusted' covers blocks \[15, 25\)"):
        generate(client, radius="trusted")
    with pytest.raises(OutsideRadiusError, match=r"radius 'local' covers blocks \[0, 30\)"):
        generate(client, radius="local")


def test_widening_to_public_keeps_the_friends_servers_at_the_ends(swarm, client):
    result = generate(client, radius="trusted+public")
    route = [hop.peer_id for hop in result.route]
    assert route[0] == swarm.named["f1"] and route[-1] == swarm.named["f2"]  # ends inside the privacy radius
    assert swarm.named["s"] in route[1:-1]                                  # the stranger in the middle only
    assert result.token_ids == generate_text(MODEL, PROMPT, GREEDY).token_ids


def test_a_privacy_radius_no_server_fits_is_refused(swarm, client):
    with pytest.raises(OutsideRadiusError, match="first and last blocks on servers inside radius 'local'"):
        generate(client, radius="public", privacy="local")


def test_the_cli_says_which_radius_failed(swarm):
    out = subprocess.run([sys.executable, "-m", "swarmllm.cli", "generate", PROMPT, "--initial-peers",
                          ",".join(swarm.initial_peers), "--radius", "local", "--max-new-tokens", "2"],
                         capture_output=True, text=True, timeout=180, env=swarm._env())
    assert out.returncode == 2, out.stderr
    assert "radius 'local'" in out.stderr and "[0, 30)" in out.stderr and "Traceback" not in out.stderr
