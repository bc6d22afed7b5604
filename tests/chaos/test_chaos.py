"""Chaos suite (marker `chaos`): generations survive nodes dying, freezing and dropping off.

Runs benchmarks/chaos.py in its small setting (6 nodes, every block twice, 8 generations of 16
tokens, 2 at a time, faults throughout) and asserts its verdict: every generation completed, every output equals the
fault-free reference, no node crashed because another failed, and no session was left open.
Part of the default suite (about 2 minutes); `pytest -m chaos` runs it alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]


def test_chaos_small(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "chaos.py"), "--quick", "--generations", "8",
                          "--out", str(tmp_path),
                          "--report", str(tmp_path / "reliability.md")], capture_output=True, text=True, timeout=900)
    report = json.loads((tmp_path / "chaos.json").read_text())
    assert sum(report["faults"].values()) >= 3 and report["failovers"] >= 1, report["faults"]  # it was chaos
    assert report["completed"] == report["generations"], report["errors"]
    assert report["equal_to_fault_free"] == report["generations"]
    assert report["nodes_crashed_by_others"] == []
    assert report["sessions_left_open"] == 0, report["sessions_left_open_by_node"]
    assert out.returncode == 0, out.stdout[-3000:]
