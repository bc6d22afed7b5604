"""The benchmarks keep working: each runs in its tiny setting and writes its JSON + table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.extended  # the default run keeps records and row_exact (and chaos, in tests/chaos)
def test_pipeline_benchmark_quick(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pipeline.py"), "--quick", "--no-transformers",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "pipeline.json").read_text())
    assert result["swarm_3_nodes"]["generated_tokens"] == 8
    assert result["swarm_3_nodes"]["decode_tokens_per_second"] > 0
    assert result["bytes_per_token_per_hop"] > 576 * 2
    assert all(node["peak_rss_mb"] > 0 for node in result["nodes_3"])
    assert "| swarm, 3 nodes |" in (tmp_path / "pipeline.md").read_text()


@pytest.mark.extended  # the default run keeps pipeline, records and row_exact
def test_load_benchmark_quick(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "load.py"), "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    result = json.loads((tmp_path / "load.json").read_text())
    assert result["all_completed"] and [x["concurrency"] for x in result["levels"]] == [1, 4]
    assert all(x["aggregate_tokens_per_second"] > 0 for x in result["levels"])


@pytest.mark.extended  # the default run keeps pipeline, records and row_exact
def test_compression_benchmark_quick(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compression.py"), "--quick", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    model = json.loads((tmp_path / "compression.json").read_text())["models"][0]
    assert model["quality"]["wire float32"]["top1_agreement"] == 1.0
    assert model["wire_bytes_per_token_per_hop"]["int8"]["payload_vs_fp32"] < 0.3
    assert model["wire_bytes_per_token_per_hop"]["int8"]["frame_vs_fp32"] <= 0.3  # header included
    assert "int8 at crossing 3 only" in model["quality"]
    assert model["kv_memory_2048_token_session"]["int8"]["sessions_per_gib"] > 3.5 * \
        model["kv_memory_2048_token_session"]["float32"]["sessions_per_gib"]
    assert "| wire int8 |" in (tmp_path / "compression.md").read_text()


@pytest.mark.extended  # the default run keeps pipeline, records and row_exact
def test_batching_benchmark_quick(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "batching.py"), "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    result = json.loads((tmp_path / "batching.json").read_text())
    assert result["same_tokens_with_and_without_batching"]
    assert [x["sessions"] for x in result["settings"]["batching"]] == [1, 2]
    assert all(x["aggregate_tokens_per_second"] > 0 for rows in result["settings"].values() for x in rows)
    assert "| sessions |" in (tmp_path / "batching.md").read_text()


@pytest.mark.extended
def test_quant_benchmark_tiny(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quant.py"), "--tiny", "--out",
                          str(tmp_path / "quant.json")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads((tmp_path / "quant.json").read_text())["models"]["smollm2-135m"]
    assert [(r["dtype"], r["quant"]) for r in rows] == [("float32", "none"), ("bfloat16", "int8"), ("bfloat16", "int4")]
    assert all("error" not in r and r["decode_tokens_per_s"] > 0 and r["perplexity"] > 1 for r in rows)
    assert rows[0]["kl_vs_fp32"] == 0 and rows[2]["weight_bytes_per_block"] < rows[0]["weight_bytes_per_block"] / 4
    assert "| smollm2-135m | swarmllm | bfloat16 | int4 |" in (tmp_path / "quant.md").read_text()


@pytest.mark.extended  # the default run keeps pipeline, records and row_exact
def test_speculative_benchmark_quick(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speculative.py"), "--quick", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    result = json.loads((tmp_path / "speculative.json").read_text())
    summary = result["profiles"][0]["summary"]
    assert set(summary) == {"prose", "code"} and set(summary["code"]) == {"off", "ngram", "early-exit"}
    assert all(mode["same_tokens_as_off"] for kind in summary.values() for mode in kind.values())
    assert summary["code"]["ngram"]["acceptance_rate"] is not None
    assert "| code | ngram |" in (tmp_path / "speculative.md").read_text()


def test_records_benchmark_quick(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "records.py"), "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    result = json.loads((tmp_path / "records.json").read_text())
    assert [a["signatures"] for a in result["announce"]] == [2, 2]
    assert result["lookup"]["records"] == 30 and result["lookup"]["validate_one_reply_ms"] > 0
    assert result["bytes"]["server_record_after"] > result["bytes"]["server_record_before"]
    assert "| ed25519 |" in (tmp_path / "records.md").read_text()


@pytest.mark.extended  # the default run keeps pipeline, records and row_exact
def test_engine_rows_benchmark_quick(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "engine_rows.py"), "--quick", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    runs = json.loads((tmp_path / "engine_rows_quick.json").read_text())["results"]["float32"]["this"]
    assert len(runs) == 1 and all(value > 0 for value in runs[0].values())
    assert "| float32 | this |" in (tmp_path / "engine_rows_quick.md").read_text()


def test_row_exact_probe_quick(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "row_exact.py"), "--quick", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    results = json.loads((tmp_path / "row_exact_quick.json").read_text())
    for env in results.values():  # the engine's rows are exact in every environment probed
        assert env["float32"]["engine"]["batched == alone == single steps"]
        assert env["bfloat16"]["engine"]["batched == alone == single steps"]
    assert "| smollm2 qkv |" in (tmp_path / "row_exact_quick.md").read_text()


@pytest.mark.extended
def test_compute_classes_benchmark_tiny(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compute_classes.py"), "--tiny", "--out",
                          str(tmp_path / "cc.json")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (model,) = json.loads((tmp_path / "cc.json").read_text())["models"]
    reference, int8_kv = model["classes"]
    assert reference["hidden_max_rel_error"] == 0 and reference["top1_agreement"] == 1
    assert 0 < int8_kv["hidden_max_rel_error"] < 0.5 and int8_kv["positions_compared"] == 4
    assert "| smollm2-135m | int8 KV |" in (tmp_path / "cc.md").read_text()


def test_receipts_benchmark_quick(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "receipts.py"), "--quick", "--out",
                          str(tmp_path / "receipts.json")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    one, long = json.loads((tmp_path / "receipts.json").read_text())["rows"]
    assert one["frame_bytes"] < 320 and one["server_issue_us"] > 0 and one["client_check_us"] > 0
    assert long["payload_bytes"] == 128 * 2304
    assert "| 1 position(s) |" in (tmp_path / "receipts.md").read_text()
