"""A real 3-node swarm with a gateway in front, for tests through HTTP clients."""

from __future__ import annotations

import contextlib
import os
import shutil
import time

import httpx
import pytest

from swarmllm.harness.local_swarm import LocalSwarm, even_spans, free_port


def wait_for_model(url: str, model: str = "smollm2-135m", timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if any(m["id"] == model for m in httpx.get(f"{url}/v1/models", timeout=5).json()["data"]):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{model} never appeared at {url}/v1/models")


@contextlib.contextmanager
def swarm_with_gateway(log_dir, gateway_args=()):
    """A 3-node swarm and a gateway in front of it, ready to serve: yields (swarm, url)."""
    swarm = LocalSwarm("smollm2-135m", even_spans(30, 3), log_dir=log_dir)
    swarm.start(timeout=180)
    try:
        port = free_port()
        swarm.wait_ready([swarm.add_gateway(port, ["--status-period", "1", *gateway_args])], timeout=120)
        url = f"http://127.0.0.1:{port}"
        wait_for_model(url)
        yield swarm, url
    finally:
        swarm.stop()


@pytest.fixture(scope="package")  # torn down after tests/e2e: idle swarms cost the later tests CPU
def gateway_swarm(tmp_path_factory):
    """(swarm, gateway url) shared by the API tests."""
    with swarm_with_gateway(tmp_path_factory.mktemp("e2e-swarm"), ["--requests-per-minute", "1000"]) as pair:
        yield pair


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium driven by Playwright, one per test module."""
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian chromium is not installed (scripts/test.sh installs it with apt-get)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()
