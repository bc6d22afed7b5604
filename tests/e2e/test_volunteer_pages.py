"""The volunteer's own page and the setup wizard in headless Chromium (Debian's, driven by Playwright).

A real swarm (bootstrap + two node processes); the first node serves its status page. The volunteer
page must update live (no reload) after a real generation; the wizard (`swarmllm setup --web`, a
real process) must show this machine, the swarm's coverage and a plan, re-plan when a cap changes,
and Start a real `swarmllm volunteer` node whose own page then says it serves.
Screenshots go to $SWARMLLM_ARTIFACTS (or a temporary folder), as in test_browser.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from swarmllm.harness.local_swarm import LocalSwarm, free_port
from swarmllm.harness.processes import ManagedProcess

pytestmark = pytest.mark.integration
MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    """(swarm, the status port of its node "watched", which serves blocks [0, 15))."""
    s = LocalSwarm(MODEL, [(15, 30)], log_dir=tmp_path_factory.mktemp("volunteer-pages"))
    s.start(timeout=180)
    try:
        port = free_port()
        s.wait_ready([s.add_node(0, 15, name="watched", extra_args=["--status-port", str(port)])], timeout=180)
        yield s, port
    finally:
        s.stop()


def _generate(swarm: LocalSwarm, home) -> None:
    out = subprocess.run([sys.executable, "-m", "swarmllm.cli", "generate", "--model", MODEL, "--initial-peers",
                          ",".join(swarm.initial_peers), "--no-lan", "--max-new-tokens", "8", "--json",
                          "Name three colours."], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "SWARMLLM_HOME": str(home)})
    assert out.returncode == 0, out.stderr[-2000:]


def _number(page, testid: str) -> int:
    return int(page.locator(f"[data-testid={testid}]").inner_text().replace(",", ""))


@pytest.mark.extended  # the default suite is over its 20-minute line on CI: `pytest -m extended` runs it
def test_the_volunteer_page_counts_a_generation_live(browser, swarm, artifacts_dir, tmp_path):
    s, port = swarm
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{port}/")
    page.wait_for_selector("[data-testid=node-state][data-state=serving]", timeout=30_000)
    page.wait_for_selector("[data-testid=connection] >> text=live", timeout=30_000)
    assert f"{MODEL} blocks [0, 15)" in page.locator("[data-testid=node-span]").inner_text()
    tokens, sessions = _number(page, "tokens-served"), _number(page, "sessions-served")
    uptime = page.locator("[data-testid=uptime]").inner_text()
    _generate(s, tmp_path / "client")
    page.wait_for_function(  # no reload: the page follows the node's event stream
        f"() => Number(document.querySelector('[data-testid=tokens-served]').innerText.replace(/,/g, '')) > {tokens}",
        timeout=30_000)
    assert _number(page, "sessions-served") == sessions + 1
    assert page.locator("[data-testid=uptime]").inner_text() != uptime
    assert "no gateway has sent" in page.locator("[data-testid=credits-none]").inner_text().lower()
    assert "protocol v" in page.locator("[data-testid=node-version]").inner_text()
    page.screenshot(path=os.path.join(artifacts_dir, "volunteer-page.png"), full_page=True)
    page.close()


@pytest.fixture
def wizard(swarm, tmp_path):
    """A `swarmllm setup --web` process for the swarm: (its url, the status port its node will use)."""
    s, _ = swarm
    port, status_port = free_port(), free_port()
    process = ManagedProcess("wizard", [sys.executable, "-m", "swarmllm.cli", "setup", "--web", "--no-browser",
                                        "--port", str(port), "--initial-peers", ",".join(s.initial_peers), "--no-lan",
                                        "--status-port", str(status_port), "--node-host", "127.0.0.1",
                                        "--name", "wizard-node"], tmp_path / "wizard.log")
    process.start({**os.environ, "SWARMLLM_HOME": str(tmp_path / "home")})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/", timeout=5).close()
            break
        except OSError:
            assert process.alive and time.monotonic() < deadline, process.log_tail()
            time.sleep(0.3)
    started: list[int] = []
    yield url, status_port, started
    for pid in started:  # the node runs in its own session, detached from the wizard: stop it here
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    process.stop()
    for pid in started:
        deadline = time.monotonic() + 20
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_wizard_shows_the_machine_coverage_and_plan_replans_and_starts_a_node(browser, wizard, artifacts_dir):
    url, status_port, started = wizard
    page = browser.new_page()
    page.goto(url + "/")
    page.wait_for_selector("[data-testid=plan]", timeout=120_000)
    assert "cores" in page.locator("[data-testid=machine-cpu]").inner_text()
    assert "GiB" in page.locator("[data-testid=machine-memory]").inner_text()
    smollm = page.locator("[data-testid=model-coverage][data-model='smollm2-135m']")
    assert smollm.locator("[data-testid=coverage-cell]").count() == 30
    assert smollm.locator("[data-testid=coverage-cell][data-count='1']").count() == 30  # the swarm's two nodes
    assert "complete" in smollm.locator("[data-testid=coverage-status]").inner_text()
    summary = page.locator("[data-testid=plan-summary]").inner_text()
    assert summary.startswith("Serve ") and "blocks [" in summary
    assert "--status-port" in page.locator("[data-testid=would-run]").inner_text()
    page.screenshot(path=os.path.join(artifacts_dir, "wizard-survey.png"), full_page=True)

    # A cap change re-plans: too little memory for any model, then a cap that fits.
    page.fill("[data-testid=cap-max-memory]", "0.02")
    page.wait_for_selector("[data-testid=plan-problem]", timeout=30_000)
    assert "nothing fits" in page.locator("[data-testid=plan-problem]").inner_text()
    assert page.locator("[data-testid=start-button]").is_disabled()
    page.screenshot(path=os.path.join(artifacts_dir, "wizard-nothing-fits.png"), full_page=True)
    page.fill("[data-testid=cap-max-memory]", "3")
    page.fill("[data-testid=cap-threads]", "1")
    page.wait_for_function("() => document.querySelector('[data-testid=would-run]')?.innerText.includes('--threads 1')",
                           timeout=30_000)
    page.wait_for_selector("[data-testid=plan]", timeout=30_000)
    command = page.locator("[data-testid=would-run]").inner_text()
    assert "--max-memory 3072MiB" in command and f"--status-port {status_port}" in command
    assert "3,072 MiB allowed (--max-memory)" in page.locator("[data-testid=recommendation]").inner_text()
    page.screenshot(path=os.path.join(artifacts_dir, "wizard-caps.png"), full_page=True)

    # Start: a real `swarmllm volunteer` with these caps, detached; then its own page says it serves.
    with page.expect_response("**/api/start") as answer:
        page.click("[data-testid=start-button]")
    reply = answer.value.json()
    assert answer.value.status == 200, reply
    started.append(reply["pid"])
    assert reply["command"][reply["command"].index("volunteer"):] == command.split()[command.split().index("volunteer"):]
    page.wait_for_selector("[data-testid=started-state][data-state=serving]", timeout=240_000)
    with urllib.request.urlopen(f"http://127.0.0.1:{status_port}/api/node", timeout=10) as r:
        node = json.loads(r.read())
    assert node["state"] == "serving" and node["peer_id"]
    # Once it serves, the wizard reads the swarm again: the coverage map shows the new node's blocks.
    served = page.locator(f"[data-testid=model-coverage][data-model='{node['model']}'] [data-testid=coverage-cell]")
    page.wait_for_function(
        "([model, start, end]) => { const cells = [...document.querySelectorAll("
        "`[data-testid=model-coverage][data-model='${model}'] [data-testid=coverage-cell]`)];"
        " return cells.length > 0 && cells.slice(start, end).every((c) => Number(c.dataset.count) >= 1) }",
        arg=[node["model"], node["start"], node["end"]], timeout=60_000)
    assert served.count() >= node["end"]
    page.screenshot(path=os.path.join(artifacts_dir, "wizard-started.png"), full_page=True)
    node_page = browser.new_page()
    node_page.goto(page.locator("[data-testid=status-link]").get_attribute("href"))
    node_page.wait_for_selector("[data-testid=node-state][data-state=serving]", timeout=30_000)
    node_page.screenshot(path=os.path.join(artifacts_dir, "wizard-node-page.png"), full_page=True)
    assert node_page.locator("[data-testid=node-span]").inner_text().startswith(f" · {node['model']} blocks")
    node_page.close()
    page.close()
