"""Row tiles (engine/row_tiles.py): the row layout, the start-up tile selection, the activation
calls, and the engine's row exactness under other kernel environments than the default one.

The subprocess tests run tests/unit/row_exact_child.py where the padding scheme used before
issue 10 (row counts padded to a multiple of 4) measurably fails on this AMD EPYC (AVX2): MKL's
CNR mode MKL_CBWR=COMPATIBLE (a 4-row float32 GEMM rounds unlike a 16-row one) and 5 threads
(float32 GELU-tanh split between threads inside a vector). Run against the old engine, both
fail; each child asserts that its environment still breaks the old scheme, so the test keeps
its teeth (if a future torch/MKL stops breaking it, the test says so instead of passing idly).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from swarmllm.engine import blocks, row_tiles
from swarmllm.engine.blocks import SequenceStep, SpanModel
from swarmllm.engine.head import ModelHead
from swarmllm.engine.row_tiles import ANY_ROWS, gated_activation, plan_rows, select_tile, tile_is_exact
from swarmllm.models.catalog import resolve_model
from swarmllm.weights import load_blocks, load_head, read_config

CHILD = Path(__file__).with_name("row_exact_child.py")


def test_layout_puts_short_steps_in_tiles_and_long_steps_alone():
    layout = plan_rows([1, 20, 3, 1, 17], tile=4, long_rows=16)
    assert layout.offsets == ((0, 1), (8, 28), (1, 4), (4, 5), (28, 45))
    assert (layout.short_rows, layout.padding, layout.rows) == (5, 3, 45)
    assert layout.segments == ((0, 4), (4, 8), (8, 28), (28, 45))
    assert [layout.is_short(s) for s in layout.segments] == [True, True, False, False]
    parts = [torch.full((n, 2), float(i)) for i, n in enumerate([1, 20, 3, 1, 17])]
    stacked = layout.stack(parts)
    assert stacked.shape == (45, 2) and stacked[5:8].eq(0).all()  # the padding rows
    assert all(torch.equal(stacked[a:b], p) for (a, b), p in zip(layout.offsets, parts))
    quantized = plan_rows([1, 20, 3], tile=ANY_ROWS, long_rows=16)
    assert quantized.segments == ((0, 4), (4, 24)) and quantized.padding == 0


def test_tile_selection_falls_back_to_one_row_when_a_row_depends_on_its_index(monkeypatch):
    monkeypatch.setattr(row_tiles, "_selected", {})
    weight = torch.randn(8, 16)

    def exact(x):
        return F.linear(x, weight)

    def index_dependent(x):  # a kernel whose last row of a tile of 4+ takes another path
        out = F.linear(x, weight)
        if len(x) >= 4:
            out[-1] = out[-1] * (1 + 2 ** -20)
        return out

    sample = (torch.randn(8, 16),)
    assert tile_is_exact(exact, sample, 4) and not tile_is_exact(index_dependent, sample, 4)
    calls = []

    def check(fn):
        return lambda tile: calls.append(tile) or tile_is_exact(fn, sample, tile)

    assert select_tile(("exact",), check(exact), (4, 1)) == 4
    assert select_tile(("index",), check(index_dependent), (4, 1)) == 1
    assert calls == [4, 4]  # 1 needs no check
    assert select_tile(("exact",), check(exact), (4, 1)) == 4 and calls == [4, 4]  # measured once per key
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        select_tile(("exact",), check(exact), (4, 1))
    finally:
        torch.set_num_threads(threads)
    assert calls == [4, 4, 4]  # ... and per thread count


def test_activation_calls_stay_below_the_threading_threshold():
    shapes = []

    def recording(t):
        shapes.append(t.shape)
        return F.gelu(t, approximate="tanh")

    gate_up = torch.randn(40, 2 * 2048)
    gate, up = gate_up.chunk(2, dim=-1)
    out = gated_activation(recording, gate, up, short=True)
    assert all(s.numel() <= row_tiles.ACTIVATION_CALL_ELEMENTS for s in shapes) and sum(s[0] for s in shapes) == 40
    assert torch.allclose(out, F.gelu(gate, approximate="tanh") * up)
    shapes.clear()
    gated_activation(recording, gate, up, short=False)  # a long step: one call, replayed with its shape
    assert shapes == [torch.Size([40, 2048])]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_tiles_of_four_keep_rows_exact(monkeypatch, dtype):
    """The tiled path (padding, several tiles, a long step beside them) that bfloat16 takes on CPUs
    with native bf16, forced here: where the self-check accepts 4, batched rows equal rows alone."""
    monkeypatch.setattr(row_tiles, "_selected", {})
    monkeypatch.setattr(blocks, "tile_candidates", lambda dtype: (4, 1))
    source = resolve_model("smollm2-135m")
    config = read_config(source)
    span = SpanModel(config, load_blocks(source, config, 0, 2, dtype), 0, 2, dtype)
    assert span.row_tile == 4, "the self-check rejects tiles of 4 on this host: the tiled path goes unchecked"
    g = torch.Generator().manual_seed(0)
    rows = [torch.randn(n, 576, generator=g) for n in (1, 3, 20, 6, 1, 2)]  # 20: a long step
    alone = [span.forward_many([SequenceStep(r, span.new_cache(32), 0)])[0] for r in rows]
    together = span.forward_many([SequenceStep(r, span.new_cache(32), 0) for r in rows])
    assert all(torch.equal(a, b) for a, b in zip(alone, together))
    cache = span.new_cache(32)
    singles = torch.cat([span.forward_many([SequenceStep(rows[3][t:t + 1], cache, t)])[0] for t in range(6)])
    assert torch.equal(singles, alone[3])


def test_the_selected_tiles_are_exact_for_the_real_model():
    source = resolve_model("smollm2-135m")
    config = read_config(source)
    for dtype in (torch.float32, torch.bfloat16):
        span = SpanModel(config, load_blocks(source, config, 0, 1, dtype), 0, 1, dtype)
        assert span.row_tile in row_tiles.tile_candidates(dtype) and span._tile_is_exact(span.row_tile)
        assert span._tile_is_exact(4)  # on this host; what the tiled test above relies on
    head = ModelHead(config, load_head(source, config, torch.float32), torch.float32)
    assert head.row_tile == 1
    rows = torch.randn(3, 1, 576, generator=torch.Generator().manual_seed(0))
    together = head.logits(rows)
    assert all(torch.equal(together[i], head.logits(rows[i:i + 1])[0]) for i in range(3))
    assert torch.equal(head.logits(rows.view(1, 3, 576))[0], together[:, 0])  # a 3-position verify step


def _child(model: str, threads: int, **env) -> dict:
    environment = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", **env)
    environment["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).parents[2] / "src"),
                                                            os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, str(CHILD), model, str(threads)], env=environment,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("model, threads, env", [
    ("smollm2-135m", 2, {"MKL_CBWR": "COMPATIBLE"}),  # MKL: a row of a 4-row GEMM != the same row among 16
    ("gemma3-270m", 5, {}),  # GELU-tanh split between 5 threads inside a vector
], ids=["mkl-cnr-compatible", "gelu-5-threads"])
def test_rows_are_exact_where_the_old_padding_scheme_fails(model, threads, env):
    result = _child(model, threads, **env)
    if not result["padding_scheme_breaks"]:
        pytest.fail(f"{env or threads} no longer breaks the old padding scheme here; pick another environment "
                    f"so this test keeps checking something ({result})")
    assert result["threads"] == threads
    for checked in (result, result["tile4"]):  # the engine's own tile, then tiles of 4 (the bf16 path)
        assert checked["batched_equals_alone"], result
        assert checked["short_step_equals_single_steps"], result
    assert result["tile4"]["tile"] in (4, 1)
