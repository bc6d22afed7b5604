"""Run by test_engine_row_tiles.py in a subprocess with another kernel environment (MKL CNR mode,
thread count): checks that a span's rows do not depend on their batch or step size, and says
whether the environment breaks the padding scheme used before issue 10. Prints one JSON line.

    MKL_CBWR=COMPATIBLE python tests/unit/row_exact_child.py smollm2-135m 2
    python tests/unit/row_exact_child.py gemma3-270m 5

Uses only APIs that predate engine/row_tiles.py, so it can be run against the old engine too
(PYTHONPATH=old/src) to confirm that the environment makes the old scheme fail. With the new
engine it also checks the span with tiles of 4 forced as the first candidate ("tile4").
"""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F

from swarmllm.engine.blocks import SequenceStep, SpanModel
from swarmllm.models.catalog import resolve_model
from swarmllm.weights import load_blocks, read_config

ROWS = (1, 3, 1, 6, 1, 2, 2)  # 16 rows stacked: batch-mates of every size, a 6-row step


def padding_scheme_breaks(config, activation: str) -> bool:
    """Whether a row changes between two calls whose row counts are multiples of 4 (4 and 16)."""
    g = torch.Generator().manual_seed(3)
    D, I = config.hidden_size, config.intermediate_size
    x = torch.randn(16, 2 * I, generator=g)
    act = F.silu if activation == "silu" else (lambda t: F.gelu(t, approximate="tanh"))
    elementwise = act(x[:4, :I]) * x[:4, I:], (act(x[:, :I]) * x[:, I:])[:4]
    w = torch.randn(2 * I, D, generator=g) * 0.05
    h = torch.randn(16, D, generator=g)
    linear = F.linear(h[:4], w), F.linear(h, w)[:4]
    return not (torch.equal(*elementwise) and torch.equal(*linear))


def properties(span: SpanModel) -> dict:
    """Batched rows == each step alone; a 6-row step == 6 single steps (after a 5-row prompt)."""
    g = torch.Generator().manual_seed(0)
    D = span.config.hidden_size
    prompt = torch.randn(5, D, generator=g)
    rows = [torch.randn(n, D, generator=g) for n in ROWS]

    def fresh():
        cache = span.new_cache(32)
        span.forward_many([SequenceStep(prompt, cache, 0)])
        return cache

    alone = [span.forward_many([SequenceStep(r, fresh(), 5)])[0] for r in rows]
    together = span.forward_many([SequenceStep(r, fresh(), 5) for r in rows])
    cache = fresh()
    singles = torch.cat([span.forward_many([SequenceStep(rows[3][t:t + 1], cache, 5 + t)])[0] for t in range(6)])
    return {"batched_equals_alone": all(torch.equal(a, b) for a, b in zip(alone, together)),
            "batched_max_diff": max(float((a - b).abs().max()) for a, b in zip(alone, together)),
            "short_step_equals_single_steps": torch.equal(alone[3], singles)}


def main() -> None:
    model, threads = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(threads)
    source = resolve_model(model)
    config = read_config(source)
    blocks = load_blocks(source, config, 0, 2, torch.float32)
    result = {"threads": torch.get_num_threads(), "padding_scheme_breaks": padding_scheme_breaks(config, config.activation),
              **properties(SpanModel(config, blocks, 0, 2, torch.float32))}
    try:
        from swarmllm.engine import blocks as engine_blocks
    except ImportError:
        engine_blocks = None
    if engine_blocks is not None and hasattr(engine_blocks, "tile_candidates"):
        # The tiles of 4 that bfloat16 uses on CPUs with native bf16, here in float32 (same code path).
        engine_blocks.tile_candidates = lambda dtype: (4, 1)
        span = SpanModel(config, blocks, 0, 2, torch.float32)
        result["tile4"] = {"tile": span.row_tile, **properties(span)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
