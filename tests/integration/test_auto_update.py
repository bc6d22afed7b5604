"""Auto-update (issue 15, point 4) in a real swarm, with two real builds of swarmllm.

Two wheels are built from this checkout, versions 0.9.0 and 0.9.1, and 0.9.0 is installed (a real
wheel install, not editable) into a fresh virtual environment whose dependencies come from the test
environment. A node from it serves the bundled model with --auto-update, trusting a release key
made for the test (SWARMLLM_RELEASE_KEYS). Then:
1. a hostile peer stores a self-signed "9.9.9" release at every honest DHT node (each refuses it)
   and holds it in its own storage, where the node's lookups find it; and the release index holds a
   release signed by the real key whose wheel was swapped on the server. The node installs neither,
   says why on its page, and keeps serving 0.9.0.
2. `swarmllm release sign` + `swarmllm release publish` put the 0.9.1 release in the DHT while a
   client holds a session on the node: the node fetches the wheel and waits, the session generates
   to its end on 0.9.0; once it is closed the node pauses, installs the wheel, restarts in the same process with the same peer id, announces 0.9.1,
   and generates exactly what one process generates.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest

from hostile_peer import HostilePeer
from swarmllm.client.generation import ClientModel, GenerationOptions, generate_text
from swarmllm.client.swarm_client import SwarmClient
from swarmllm.engine.generation import generate
from swarmllm.engine.sampling import SamplingParams
from swarmllm.harness.local_swarm import LocalSwarm, free_port
from swarmllm.protocol.releases import RELEASE_KEY, ReleaseRecord, release_file, sign_release
from swarmllm.swarm import BackgroundLoop, Identity, dht_time

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MODEL, PROMPT = "smollm2-135m", "The capital of France is"
GREEDY = SamplingParams(max_new_tokens=6)
KEY, EVIL = Identity.generate(), Identity.generate()


def build_wheel(root: Path, version: str) -> Path:
    """A wheel of this checkout with its version set to `version` (as a release would be built)."""
    tree = root / f"tree-{version}"
    shutil.copytree(REPO / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, tree / name)
    pyproject = (tree / "pyproject.toml").read_text()
    (tree / "pyproject.toml").write_text(re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', pyproject, 1))
    init = tree / "src" / "swarmllm" / "__init__.py"
    init.write_text(re.sub(r'(?m)^__version__ = ".*"$', f'__version__ = "{version}"', init.read_text(), 1))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(root / "dist"), str(tree)], check=True, timeout=300, capture_output=True)
    return next((root / "dist").glob(f"swarmllm-{version}-*.whl"))


def make_venv(root: Path, wheel: Path) -> Path:
    """A virtual environment with `wheel` installed; the other packages come from this one (a .pth
    line after its own site-packages, so that its swarmllm is the wheel's, not this checkout's)."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "zz-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   timeout=300)
    return python


def signed(release: ReleaseRecord, key: Identity, days: float):
    return sign_release(release, public_key=key.public_key, sign=key.sign, expiration=dht_time() + days * 86400)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("update")
    old, new = build_wheel(root, "0.9.0"), build_wheel(root, "0.9.1")
    python = make_venv(root, old)
    index = root / "index"
    index.mkdir()
    # The index's release: signed by the real key, but the wheel served under its name is not the signed one.
    swapped = new.read_bytes()
    (index / "swarmllm-0.9.5-py3-none-any.whl").write_bytes(swapped[:-8] + b"evil!!!!")
    tampered = ReleaseRecord(version="0.9.5", protocol_version=8, min_protocol_version=1,
                             wheel_name="swarmllm-0.9.5-py3-none-any.whl",
                             wheel_sha256=hashlib.sha256(swapped).hexdigest(), wheel_size=len(swapped),
                             wheel_url="swarmllm-0.9.5-py3-none-any.whl", published_at=time.time())
    (index / "release.json").write_text(release_file(signed(tampered, KEY, days=1)))
    env = {"SWARMLLM_RELEASE_KEYS": KEY.public_key[4:].hex(), "SWARMLLM_HOME": str(root / "home")}
    swarm = LocalSwarm(MODEL, [], log_dir=root / "logs", env=env)
    swarm.start(timeout=120)
    port = free_port()
    node = swarm.add_node(0, 30, name="volunteer", program=["env", "-u", "PYTHONPATH", str(python), "-m", "swarmllm.cli"],
                          extra_args=["--auto-update", "--update-check", "3", "--release-index", index.as_uri() + "/",
                                      "--status-port", str(port), "--throughput", "1"])
    swarm.wait_ready([node], timeout=180)
    try:
        yield {"root": root, "new": new, "swarm": swarm, "node": node, "page": f"http://127.0.0.1:{port}/api/node",
               "env": {**os.environ, **env}}
    finally:
        swarm.stop()


def page(setup) -> dict:
    with urllib.request.urlopen(setup["page"], timeout=5) as answer:
        return json.loads(answer.read())


def wait_page(setup, predicate, timeout: float, what: str) -> dict:
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            last = page(setup)
            if predicate(last):
                return last
        except OSError:
            pass  # restarting: the page is down for a moment
        time.sleep(0.5)
    pytest.fail(f"{what} not seen in {timeout:.0f} s; last page: {last}\n{setup['node'].log_tail(30)}")


def announced_versions(swarm) -> set[str]:
    with SwarmClient.connect(swarm.initial_peers) as client:
        return {r.software_version for r in client.find_servers(MODEL, 30)}


def test_forged_and_swapped_releases_are_not_installed(setup):
    swarm, loop = setup["swarm"], BackgroundLoop("hostile")
    peer = loop.run(HostilePeer.join(swarm.initial_peers))
    try:
        forged = ReleaseRecord(version="9.9.9", protocol_version=8, min_protocol_version=1,
                               wheel_name="swarmllm-9.9.9-py3-none-any.whl", wheel_sha256="0" * 64, wheel_size=10,
                               wheel_url="http://127.0.0.1:9/evil.whl", published_at=time.time())
        envelope = signed(forged, EVIL, days=30)
        item = (RELEASE_KEY, EVIL.peer_id, envelope.to_value(), envelope.expiration)
        for honest in (swarm.bootstrap.ready["peer_id"], setup["node"].ready["peer_id"]):
            assert loop.run(peer.store_at(honest, [item])) == [False], f"{honest} stored a forged release"
        peer.hold([item])  # served to the node's lookups from the hostile peer's own storage
        report = wait_page(setup, lambda r: (r["update"] or {}).get("failed") == ["0.9.5"], 60,
                           "the swapped wheel refused")
        assert "not the signed one" in report["update"]["error"]
        time.sleep(7)  # two more looks, with the forged release held where lookups find it
        report = page(setup)
        assert report["version"] == "0.9.0" and report["state"] == "serving"
        assert report["update"]["available"] is None and report["update"]["state"] == "failed"
        assert not list((setup["root"] / "home" / "updates").glob("*9.9.9*"))
    finally:
        loop.run(peer.shutdown(), timeout=10)
        loop.close()


def test_a_signed_release_is_installed_between_sessions_and_the_node_comes_back(setup):
    swarm, node, env = setup["swarm"], setup["node"], setup["env"]
    peer_id, pid = node.ready["peer_id"], node.process.pid
    key_file = setup["root"] / "release.key"
    KEY.save(key_file)
    cli = [sys.executable, "-m", "swarmllm.cli", "release"]
    out = subprocess.run([*cli, "sign", str(setup["new"]), "--key", str(key_file), "--url", setup["new"].as_uri(),
                          "--days", "2", "--out", str(setup["root"] / "release-0.9.1.json")],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0 and "signed swarmllm 0.9.1" in out.stdout, out.stderr
    model = ClientModel.load(MODEL)
    ids = model.prompt_ids(PROMPT)
    with SwarmClient.connect(swarm.initial_peers) as client:
        session = client.open_session(MODEL, 30, len(ids) + GREEDY.max_new_tokens)
        out = subprocess.run([*cli, "publish", str(setup["root"] / "release-0.9.1.json"), "--initial-peers",
                              ",".join(swarm.initial_peers)], capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 0, out.stderr
        out = subprocess.run([*cli, "show", "--json", "--initial-peers", ",".join(swarm.initial_peers)],
                             capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 0 and [r["version"] for r in json.loads(out.stdout)] == ["0.9.1"], out.stderr
        # a session is open: the node fetches the wheel, then waits; it neither pauses nor installs
        wait_page(setup, lambda r: r["update"]["state"] == "waiting for sessions to end", 60, "waiting")
        time.sleep(4)
        report = page(setup)
        assert (report["version"], report["state"], report["sessions_active"]) == ("0.9.0", "serving", 1)
        tokens = generate(model.head, model.tokenizer, session.forward, ids, GREEDY, len(ids) + GREEDY.max_new_tokens)
        session.close()
    began = time.monotonic()
    report = wait_page(setup, lambda r: r["version"] == "0.9.1" and r["state"] == "serving", 240,
                       "the node serving again as 0.9.1")
    took = time.monotonic() - began
    assert report["peer_id"] == peer_id and node.process.pid == pid and node.alive  # same node, same process
    log = node.log_path.read_text()
    assert log.count("swarmllm-ready ") == 2 and "installed swarmllm 0.9.1" in log
    # the restarted node remembers the swapped 0.9.5 (not fetched again) and says so
    assert (report["update"]["current"], report["update"]["available"], report["update"]["failed"]) == \
        ("0.9.1", None, ["0.9.5"])
    assert log.count("is available (running") == 2  # 0.9.5 once (swapped wheel), 0.9.1 once
    deadline = time.monotonic() + 30
    while announced_versions(swarm) != {"0.9.1"}:
        assert time.monotonic() < deadline, "the DHT still announces the old version"
        time.sleep(1)
    with SwarmClient.connect(swarm.initial_peers) as client:
        result = generate_text(MODEL, PROMPT, GenerationOptions(sampling=GREEDY, ring=False), client=client)
    served = page(setup)  # the restarted node's own counters (its page): the generation went through it
    assert served["tokens_served"] > 0 and served["bytes_up"] > 0 and served["bytes_down"] > 0
    reference = generate_text(MODEL, PROMPT, GREEDY)
    assert result.text == reference.text and tokens.token_ids == reference.token_ids
    print(f"update: published -> serving 0.9.1 in {took:.1f} s")
