"""The chat page and the dashboard in headless Chromium (Debian's, driven by Playwright).

Screenshots go to $SWARMLLM_ARTIFACTS (or a temporary folder) as test artifacts.
"""

from __future__ import annotations

import json
import os
import urllib.request
import signal

import pytest

from .conftest import swarm_with_gateway

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Its own swarm: the dashboard test stops one of its nodes."""
    with swarm_with_gateway(tmp_path_factory.mktemp("browser-swarm")) as pair:
        yield pair


def test_chat_streams_a_reply(browser, site, artifacts_dir):
    _, url = site
    page = browser.new_page()
    page.goto(url + "/")
    page.wait_for_selector("[data-testid=model-select] >> text=smollm2-135m", state="attached", timeout=30_000)
    page.fill("[data-testid=chat-input]", "Name a colour.")
    page.select_option("[data-testid=radius-select]", "local")  # this swarm's nodes share the gateway's owner key
    with page.expect_request("**/v1/chat/completions") as sent:
        page.click("[data-testid=send-button]")
    assert sent.value.post_data_json["radius"] == "local"
    reply = page.locator("[data-testid=assistant-message]").first
    page.wait_for_function(
        "() => { const m = document.querySelector('[data-testid=assistant-message]'); return m && m.innerText.trim().length > 0 }",
        timeout=60_000)
    page.wait_for_selector("[data-testid=reply-meta]", timeout=60_000)
    meta = page.locator("[data-testid=reply-meta]").first.inner_text()
    assert "tok/s" in meta and "[0,10)" in meta and "[20,30)" in meta
    assert reply.inner_text().strip()
    page.screenshot(path=os.path.join(artifacts_dir, "chat.png"), full_page=True)

    # Second turn (the whole conversation is sent), stopped by the user mid-stream.
    page.fill("[data-testid=max-tokens]", "400")
    page.fill("[data-testid=chat-input]", "Now write a long poem about it.")
    page.click("[data-testid=send-button]")
    page.wait_for_function(
        "() => { const m = document.querySelectorAll('[data-testid=assistant-message]'); "
        "return m.length === 2 && m[1].innerText.trim().length > 20 }", timeout=60_000)
    page.click("[data-testid=stop-button]")
    page.wait_for_selector("[data-testid=send-button]", timeout=10_000)
    assert "stopped" in page.locator("body").inner_text().lower()
    page.screenshot(path=os.path.join(artifacts_dir, "chat-stopped.png"), full_page=True)
    page.close()


def _ask(url: str, prompt: str = "Hi", max_tokens: int = 2, chat: bool = False) -> None:
    """One completion: demand this gateway counts and publishes (issue 14), tokens the nodes count."""
    body = json.dumps({"model": "smollm2-135m", "max_tokens": max_tokens, "temperature": 0.7, "seed": 1,
                       **({"messages": [{"role": "user", "content": prompt}]} if chat else {"prompt": prompt})}).encode()
    request = urllib.request.Request(url + ("/v1/chat/completions" if chat else "/v1/completions"), body,
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as reply:
        assert reply.status == 200


def test_dashboard_shows_nodes_and_coverage_then_a_gap(browser, site, artifacts_dir):
    swarm, url = site
    _ask(url)
    page = browser.new_page()
    page.goto(url + "/dashboard")
    page.wait_for_function("() => document.querySelectorAll('[data-testid=node-row]').length === 3", timeout=30_000)
    status = page.locator("[data-testid=coverage-status]").first
    assert "complete" in status.inner_text()
    assert page.locator("[data-testid=coverage-cell]").count() == 30
    assert page.locator("[data-testid=coverage-cell][data-count='0']").count() == 0
    precision = page.locator("[data-testid=node-precision]").first.inner_text()
    assert precision.split(" · ")[0] in ("bf16", "fp32") and "ring" in precision  # from the node's record
    # the demand this gateway published (DHT record) beside the supply the nodes announce
    page.wait_for_function(
        "() => { const r = document.querySelector('[data-testid=demand-row][data-model=\"smollm2-135m\"]');"
        " return r && Number(r.dataset.demand) > 0 && r.querySelector('[data-testid=demand-status]').innerText.includes('ok') }",
        timeout=30_000)
    # What the nodes announce of themselves (claims, marked so on the page): uptime, memory, CPU, tokens, bytes.
    page.wait_for_function(
        "() => { const rows = [...document.querySelectorAll('[data-testid=node-counters-row]')];"
        " const v = (r, id) => Number(r.querySelector(`[data-testid=${id}]`).dataset.value || 0);"
        " return rows.length === 3 && rows.every(r => v(r, 'node-uptime') > 0 && v(r, 'node-memory') > 10e6)"
        " && rows.every(r => v(r, 'node-tokens') > 0) }", timeout=30_000)  # the completion above went through all
    assert page.locator("[data-testid=node-bytes]").first.get_attribute("data-up") not in ("", "0")
    # The timeline has the three nodes (seen at the gateway's first look), coverage over time, the join box.
    assert page.locator("[data-testid=timeline-event]").count() >= 3
    page.wait_for_function("() => Number(document.querySelector('[data-testid=coverage-history]').dataset.samples) >= 2",
                           timeout=30_000)
    join = page.locator("[data-testid=join-box]").inner_text()
    assert "swarmllm volunteer swarmllm1." in join and "--initial-peers /ip4/127.0.0.1/" in join
    env = page.locator("[data-testid=agent-env-lines]").inner_text()
    assert f"OPENAI_BASE_URL={url}/v1" in env and "OPENAI_API_KEY=none" in env and "OPENAI_MODEL=smollm2-135m" in env
    # A long generation in progress: its chain shows, live.
    import threading

    long = threading.Thread(target=_ask, args=(url, "Write a long story about the sea.", 200, True), daemon=True)
    long.start()
    page.wait_for_selector("[data-testid=chain-row]", timeout=30_000)
    assert "[0,10)" in page.locator("[data-testid=chain-row]").first.inner_text().replace(" ", "")
    page.screenshot(path=os.path.join(artifacts_dir, "dashboard-complete.png"), full_page=True)
    long.join(timeout=120)

    swarm.nodes[1].signal(signal.SIGTERM)  # graceful leave: blocks [10, 20) become uncovered
    page.wait_for_function(
        "() => { const s = document.querySelector('[data-testid=coverage-status]'); return s && s.innerText.includes('gap') }",
        timeout=40_000)  # no page reload: the dashboard updates live
    assert page.locator("[data-testid=coverage-cell][data-count='0']").count() == 10
    assert "10" in status.inner_text()
    page.wait_for_function(  # still demanded (60 s window), no longer covered: the warning
        "() => { const r = document.querySelector('[data-testid=demand-row][data-model=\"smollm2-135m\"]');"
        " return r && r.innerText.includes('demanded but not covered') }", timeout=30_000)
    page.wait_for_selector("[data-testid=timeline-event][data-kind=departed]", timeout=30_000)  # the departure, live
    page.screenshot(path=os.path.join(artifacts_dir, "dashboard-gap.png"), full_page=True)
    page.close()
