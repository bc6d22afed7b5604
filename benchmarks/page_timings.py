"""Benchmark: the pages in a real browser (Debian's headless Chromium, Playwright) against a real swarm.

Starts a 3-node smollm2-135m swarm on loopback and a gateway, then, --runs times each, in a fresh
browser context (empty cache):
- the chat page: navigation timing (DOMContentLoaded, load) and the moment the model list is filled in;
- a chat turn: from the click on Send to the first character of the reply on screen (measured in the
  page: performance.now() at the click and in a MutationObserver), and to the end of the reply;
- the dashboard: load, and the moment the nodes table shows the swarm's three nodes.
Prints and writes benchmarks/results/page_timings.json and .md. Medians and maxima, in milliseconds.

    python benchmarks/page_timings.py [--runs 5] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from swarmllm.harness.local_swarm import LocalSwarm, even_spans, free_port  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]

FIRST_TOKEN_PROBE = """() => new Promise((resolve) => {
  const start = performance.now();
  let first = null;
  const seen = () => {
    const m = document.querySelectorAll('[data-testid=assistant-message]');
    const last = m[m.length - 1];
    if (first === null && last && last.innerText.trim().length > 0) first = performance.now() - start;
    const meta = document.querySelectorAll('[data-testid=reply-meta]').length;
    if (first !== null && meta >= m.length && !document.querySelector('[data-testid=stop-button]')) {
      observer.disconnect();
      resolve({first_token_ms: first, reply_ms: performance.now() - start});
    }
  };
  const observer = new MutationObserver(seen);
  observer.observe(document.body, {subtree: true, childList: true, characterData: true});
  document.querySelector('[data-testid=send-button]').click();
})"""

NAVIGATION = """() => { const n = performance.getEntriesByType('navigation')[0];
  return {dom_content_loaded_ms: n.domContentLoadedEventEnd, load_ms: n.loadEventEnd}; }"""


def wait_for_model(url: str, timeout: float = 120) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=5) as r:
                if json.loads(r.read())["data"]:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the gateway lists no model")


def measure(url: str, runs: int, max_tokens: int) -> dict:
    from playwright.sync_api import sync_playwright

    chat, turn, dash = [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        for i in range(runs):
            context = browser.new_context()  # empty cache and storage each time
            page = context.new_page()
            started = time.perf_counter()
            page.goto(url + "/")
            page.wait_for_selector("[data-testid=model-select] >> text=smollm2-135m", state="attached", timeout=60_000)
            chat.append({**page.evaluate(NAVIGATION), "models_listed_ms": (time.perf_counter() - started) * 1000})
            page.fill("[data-testid=max-tokens]", str(max_tokens))
            page.fill("[data-testid=chat-input]", f"Name a colour. ({i})")
            turn.append(page.evaluate(FIRST_TOKEN_PROBE))
            started = time.perf_counter()
            page.goto(url + "/dashboard")
            page.wait_for_function("() => document.querySelectorAll('[data-testid=node-row]').length === 3",
                                   timeout=60_000)
            dash.append({**page.evaluate(NAVIGATION), "nodes_shown_ms": (time.perf_counter() - started) * 1000})
            context.close()
            print(f"run {i + 1}: chat load {chat[-1]['load_ms']:.0f} ms, first token {turn[-1]['first_token_ms']:.0f} "
                  f"ms, reply {turn[-1]['reply_ms']:.0f} ms, dashboard nodes {dash[-1]['nodes_shown_ms']:.0f} ms",
                  flush=True)
        browser.close()

    def summary(rows: list[dict]) -> dict:
        return {key: {"median": round(statistics.median(r[key] for r in rows), 1),
                      "max": round(max(r[key] for r in rows), 1)} for key in rows[0]}

    return {"chat_page": summary(chat), "chat_turn": summary(turn), "dashboard": summary(dash),
            "runs": {"chat_page": chat, "chat_turn": turn, "dashboard": dash}}


def markdown(report: dict) -> str:
    lines = ["# The pages in headless Chromium", "", f"`{report['command']}`, {report['date']}: "
             f"{report['setup']}", "", "| page | measure | median ms | max ms |", "|---|---|---|---|"]
    for page in ("chat_page", "chat_turn", "dashboard"):
        for key, value in report[page].items():
            lines.append(f"| {page} | {key} | {value['median']:.0f} | {value['max']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--max-tokens", type=int, default=32)
    args = p.parse_args()
    if not os.path.exists(CHROMIUM):
        print("needs Debian's chromium (apt-get install chromium)", file=sys.stderr)
        return 2
    log_dir = Path(tempfile.mkdtemp(prefix="page-timings-"))
    with LocalSwarm("smollm2-135m", even_spans(30, 3), log_dir=log_dir) as swarm:
        port = free_port()
        swarm.wait_ready([swarm.add_gateway(port, ["--status-period", "1"])], timeout=120)
        url = f"http://127.0.0.1:{port}"
        wait_for_model(url)
        report = {"command": "python benchmarks/page_timings.py " + " ".join(sys.argv[1:]),
                  "date": time.strftime("%Y-%m-%d"),
                  "setup": f"3-node smollm2-135m swarm + gateway on loopback, {os.cpu_count()} cores; a fresh "
                           f"browser context per run; chat turns of at most {args.max_tokens} tokens, the gateway's "
                           "default sampling and verification",
                  **measure(url, args.runs, args.max_tokens)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "page_timings.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "page_timings.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
