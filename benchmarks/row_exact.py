"""Probe: does a row's result depend on how many rows its call has? Per op, per kernel environment.

The engine needs a row's output to depend on that row's input only (continuous batching,
failover replays of cut steps, speculative verify rows, two-server comparisons; see
engine/row_tiles.py). This probe measures, for the ops a block runs on stacked rows, in one
subprocess per kernel environment (MKL instruction set and CNR mode, ATen's vector ISA,
thread count):

- `counts`: the row counts M in 1..32, 48, 64 at which some row of an M-row call (taken at
  the start and at the end of a 64-row sample) differs from the same row in the 64-row call;
- `padded to 4`: whether every multiple of 4 agrees (the scheme used until issue 10);
- `tiles`: the tile sizes Q (linears only) for which a row is the same at every index of a
  Q-row call, whatever the other rows (the start-up self-check of row_tiles.tile_is_exact);
- `engine`: if this tree has engine/row_tiles.py, the tile a 2-block smollm2 span selects and
  whether its batched, short and single steps agree bit for bit (quant="none").

    python benchmarks/row_exact.py [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ENVIRONMENTS = [  # (name, extra environment, torch threads)
    ("default, 2 threads", {}, 2),
    ("default, 1 thread", {}, 1),
    ("default, 5 threads", {}, 5),
    ("MKL_CBWR=COMPATIBLE", {"MKL_CBWR": "COMPATIBLE"}, 2),
    ("MKL_CBWR=AUTO,STRICT", {"MKL_CBWR": "AUTO,STRICT"}, 2),
    ("MKL_ENABLE_INSTRUCTIONS=SSE4_2", {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}, 2),
    ("MKL_ENABLE_INSTRUCTIONS=AVX", {"MKL_ENABLE_INSTRUCTIONS": "AVX"}, 2),
    ("ATEN_CPU_CAPABILITY=default", {"ATEN_CPU_CAPABILITY": "default"}, 2),
]
LINEARS = {  # name: (out, in) of the fused projections and the LM head
    "smollm2 qkv": (960, 576), "smollm2 o": (576, 576), "smollm2 gate_up": (3072, 576),
    "smollm2 down": (576, 1536), "smollm2 head": (49152, 576),
    "gemma3 qkv": (1536, 640), "gemma3 o": (640, 1024), "gemma3 gate_up": (4096, 640), "gemma3 down": (640, 2048),
}
COUNTS = list(range(1, 33)) + [48, 64]
QUICK_COUNTS = [1, 2, 3, 4, 5, 8, 16]
QUICK_LINEARS = ("smollm2 qkv", "smollm2 down")
TILES = (1, 2, 3, 4, 5, 8)


def _row_ops(dtype):
    """Row-wise ops of a block other than the linears: name -> (fn on [M, width], width)."""
    import torch
    import torch.nn.functional as F

    from swarmllm.engine.norm import RMSNorm
    from swarmllm.engine.rope import apply_rope

    g = torch.Generator().manual_seed(1)
    norm = RMSNorm(torch.randn(576, generator=g), 576, 1e-5, dtype)
    head_norm = RMSNorm(None, 64, 1e-5, dtype)
    return {
        "rms norm": (norm, 576),
        "per-head q/k norm": (lambda x: head_norm(x.view(len(x), 12, 64)).reshape(len(x), -1), 768),
        "silu(gate) * up": (lambda x: F.silu(x[:, :1536]) * x[:, 1536:], 3072),
        "gelu_tanh(gate) * up": (lambda x: F.gelu(x[:, :2048], approximate="tanh") * x[:, 2048:], 4096),
        # each row carries its own cos and sin (a position's table rows) after its 12 heads
        "rope": (lambda x: apply_rope(x[:, :768].reshape(len(x), 12, 64), x[:, 768:832, None].transpose(1, 2),
                                      x[:, 832:, None].transpose(1, 2)).reshape(len(x), -1), 896),
        "logit soft-cap": (lambda x: torch.tanh(x / 30.0) * 30.0, 4096),
    }


def _differing_counts(fn, x, counts) -> list[int]:
    import torch

    full = fn(x)
    n = len(x)
    return [m for m in counts if not all(torch.equal(fn(x[a:a + m].contiguous()), full[a:a + m]) for a in (0, n - m))]


def _tile_exact(fn, x, tile: int) -> bool:
    """Row x[0] alone (zeros elsewhere) at every index of a `tile`-row call == x[0] among random rows."""
    import torch

    sample = x[:tile].contiguous()
    ref = fn(sample)
    for i in range(tile):
        alone = torch.zeros_like(sample)
        alone[i] = sample[0]
        if not torch.equal(fn(alone)[i], ref[0]):
            return False
    return torch.equal(fn(sample.roll(1, 0).contiguous()), ref.roll(1, 0))


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    except OSError:
        return "unknown"


def _engine_check(dtype) -> dict | None:
    """The engine itself, if this tree selects row tiles: its tile and the batched == alone property."""
    import torch

    try:
        from swarmllm.engine import row_tiles  # noqa: F401
    except ImportError:
        return None
    from swarmllm.engine.blocks import SequenceStep, SpanModel
    from swarmllm.models.catalog import resolve_model
    from swarmllm.weights import load_blocks, read_config

    source = resolve_model("smollm2-135m")
    config = read_config(source)
    span = SpanModel(config, load_blocks(source, config, 0, 2, dtype), 0, 2, dtype)
    g = torch.Generator().manual_seed(2)
    rows = [torch.randn(n, 576, generator=g) for n in (1, 3, 1, 6, 1, 1, 2)]
    alone = [span.forward_many([SequenceStep(r, span.new_cache(16), 0)])[0] for r in rows]
    together = span.forward_many([SequenceStep(r, span.new_cache(16), 0) for r in rows])
    singles = []
    for r in rows[3:4]:
        cache = span.new_cache(16)
        singles.append(torch.cat([span.forward_many([SequenceStep(r[t:t + 1], cache, t)])[0] for t in range(len(r))]))
    exact = all(torch.equal(a, b) for a, b in zip(alone, together)) and torch.equal(singles[0], alone[3])
    return {"tile": span.row_tile, "batched == alone == single steps": exact}


def probe(quick: bool) -> dict:
    """This process's environment: every op, float32 and bfloat16."""
    import torch
    import torch.nn.functional as F

    out = {"threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "cpu": _cpu_name(), "blas": next((line.strip(" -") for line in torch.__config__.show().splitlines()
                                              if "Math Kernel Library" in line), "unknown")}
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        entry = {}
        linears = {k: v for k, v in LINEARS.items() if not quick or k in QUICK_LINEARS}
        counts = QUICK_COUNTS if quick else COUNTS
        for name, (n_out, n_in) in linears.items():
            weight = (torch.randn(n_out, n_in, generator=g) * 0.05).to(dtype)
            x = torch.randn(64, n_in, generator=g).to(dtype)
            fn = lambda t, w=weight: F.linear(t, w)  # noqa: E731
            differing = _differing_counts(fn, x, counts)
            entry[name] = {"counts": differing, "padded to 4": not any(m % 4 == 0 for m in differing),
                           "tiles": [q for q in TILES if _tile_exact(fn, x, q)]}
        for name, (fn, width) in _row_ops(dtype).items():
            x = torch.randn(64, width, generator=g).to(dtype)
            differing = _differing_counts(fn, x, counts)
            entry[name] = {"counts": differing, "padded to 4": not any(m % 4 == 0 for m in differing)}
        entry["engine"] = _engine_check(dtype)
        out[str(dtype).replace("torch.", "")] = entry
    return out


def _summary(counts: list[int]) -> str:
    if not counts:
        return "none"
    return ",".join(map(str, counts[:8])) + (f",... ({len(counts)})" if len(counts) > 8 else "")


def table(results: dict) -> str:
    first = next(iter(results.values()))
    lines = ["# Row exactness per op and kernel environment (`benchmarks/row_exact.py`)", "",
             f"Host: {first.get('cpu', 'unknown')}; {first.get('blas', 'unknown')}.", "",
             "Cells: row counts (of 1..32, 48, 64) at which some row differs from the same row in a "
             "64-row call; `pad4 ✗` where a multiple of 4 differs too (the old padding scheme fails); "
             "`tiles` for linears: tile sizes Q at which every index of a Q-row call computes a row alike.", ""]
    for env, result in results.items():
        lines += [f"## {env} (torch threads {result['threads']}, ATen {result['cpu_capability']})", "",
                  "| op | float32 | bfloat16 |", "|---|---|---|"]
        for op in result["float32"]:
            if op == "engine":
                continue
            cells = []
            for dtype in ("float32", "bfloat16"):
                r = result[dtype][op]
                cell = _summary(r["counts"]) + ("" if r["padded to 4"] else " (pad4 ✗)")
                if "tiles" in r:
                    cell += f"; tiles {','.join(map(str, r['tiles']))}"
                cells.append(cell)
            lines.append(f"| {op} | " + " | ".join(cells) + " |")
        engines = [result[d]["engine"] for d in ("float32", "bfloat16")]
        if any(engines):
            lines.append("| engine (2 smollm2 blocks) | " + " | ".join(
                f"tile {e['tile']}, exact: {'yes' if e['batched == alone == single steps'] else 'NO'}" if e else "-"
                for e in engines) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true",
                        help="CI: two smollm2 linears, a few row counts, two environments")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    if args.child is not None:
        import torch

        torch.set_num_threads(args.child)
        print(json.dumps(probe(args.quick)))
        return
    results = {}
    for name, extra, threads in (ENVIRONMENTS[:1] + ENVIRONMENTS[3:4] if args.quick else ENVIRONMENTS):
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", **extra)
        command = [sys.executable, __file__, "--child", str(threads)] + (["--quick"] if args.quick else [])
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(name, "done", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "row_exact_quick" if args.quick else "row_exact"
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    (out / f"{stem}.md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
