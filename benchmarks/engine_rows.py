"""Engine cost of row-exact compute: decode, batched steps, a verify step and a prefill, one process each.

Measures smollm2-135m through all 30 blocks in one process (no swarm, no network):
- decode: one session, greedy, embed -> 30 blocks -> LM head -> argmax per token (tokens/s);
- batch B (4, 8): B sessions, one decode step each, run as one `forward_many` through the 30
  blocks (blocks only: on a server the head runs on the clients); aggregate tokens/s = B / step;
- verify 8: one session's 8-position step (a speculative verify of 7 drafts), blocks only, ms;
- prefill 256: one 256-position step through the 30 blocks, ms.
Dense weights by default; `--dtypes bfloat16:int4` runs quantized blocks (and the int8 head).
Each figure is the median over its steps. Several source trees can be compared (`--trees
name=path/to/src,...`, e.g. the code before and after a change): their processes alternate
within every round, so both see the same background load, and the table gives each tree's
median over the rounds. Writes JSON and a markdown table.

    python benchmarks/engine_rows.py --trees before=/tmp/before/src,after=src,tile4=src@4/1 --rounds 3
    python benchmarks/engine_rows.py --quick          # CI: this tree, few steps, float32 only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODEL = "smollm2-135m"
ROOT = Path(__file__).resolve().parents[1]
FIGURES = [("decode tok/s", "decode_tokens_per_s"), ("decode CPU ms/token", "decode_cpu_ms"),
           ("batch 4 tok/s", "batch4_tokens_per_s"),
           ("batch 8 tok/s", "batch8_tokens_per_s"), ("verify 8 ms", "verify8_ms"), ("prefill 256 ms", "prefill256_ms")]


def child(dtype_name: str, steps: int, threads: int, tiles: str | None) -> dict:
    """All workloads for one dtype, in this process; `tiles` overrides the dense tile candidates."""
    import torch

    torch.set_num_threads(threads)
    from swarmllm.engine import blocks
    from swarmllm.engine.blocks import SequenceStep, SpanModel

    if tiles:  # this tree's tile_candidates, replaced
        blocks.tile_candidates = lambda dtype: tuple(int(t) for t in tiles.split("/"))
    from swarmllm.engine.head import ModelHead
    from swarmllm.models.catalog import resolve_model
    from swarmllm.weights import load_blocks, load_head, read_config

    dtype_name, _, quant = dtype_name.partition(":")
    quant = quant or "none"
    dtype = getattr(torch, dtype_name)
    source = resolve_model(MODEL)
    config = read_config(source)
    load_dtype = dtype if quant == "none" else torch.float32  # quantized from full-precision values
    blocks_ = load_blocks(source, config, 0, config.n_blocks, load_dtype, keep_int4=quant == "int4")
    span = SpanModel(config, blocks_, 0, config.n_blocks, dtype, quant)
    head = ModelHead(config, load_head(source, config, load_dtype), dtype, quant)
    prompt = [1, 504, 3287, 282, 9, 8, 7, 42]

    cpu = []

    def timed(fn) -> float:
        started, cpu_started = time.perf_counter(), time.process_time()
        fn()
        cpu.append(time.process_time() - cpu_started)
        return time.perf_counter() - started

    with torch.inference_mode():
        cache = span.new_cache(64)
        token = int(head.logits(span(head.embed([prompt]), cache, 0)[:, -1:])[0, -1].argmax())
        per_token, cpu[:] = [], []
        for t in range(steps + 2):
            def one() -> None:
                nonlocal token
                out = span(head.embed([[token]]), cache, len(prompt) + t)
                token = int(head.logits(out)[0, -1].argmax())
            per_token.append(timed(one))
        result = {"decode_tokens_per_s": 1 / statistics.median(per_token[2:]),  # the first two warm up
                  "decode_cpu_ms": 1000 * statistics.median(cpu[2:])}

        for batch in (4, 8):
            caches = [span.new_cache(64) for _ in range(batch)]
            span.forward_many([SequenceStep(head.embed([prompt])[0], c, 0) for c in caches])
            hidden = [head.embed([[100 + i]])[0] for i in range(batch)]
            per_step = [timed(lambda t=t: span.forward_many([SequenceStep(h, c, len(prompt) + t)
                                                            for h, c in zip(hidden, caches)]))
                        for t in range(max(3, steps // 2) + 1)]
            result[f"batch{batch}_tokens_per_s"] = batch / statistics.median(per_step[1:])

        draft = head.embed([list(range(200, 208))])
        result["verify8_ms"] = 1000 * statistics.median(
            timed(lambda: span(draft, cache, len(prompt))) for _ in range(max(3, steps // 4)))
        long_cache = span.new_cache(300)
        long_prompt = head.embed([[(7 * i) % 40000 + 10 for i in range(256)]])
        result["prefill256_ms"] = 1000 * statistics.median(
            timed(lambda: span(long_prompt, long_cache, 0)) for _ in range(2 if steps > 8 else 1))
    return result


def run_child(tree: str, dtype: str, steps: int, threads: int) -> dict:
    """tree: path/to/src, or path/to/src@4/1 to try those dense tiles instead of the tree's own."""
    src, _, tiles = tree.partition("@")
    env = dict(os.environ, PYTHONPATH=str(Path(src).resolve()), OMP_WAIT_POLICY="PASSIVE")
    command = [sys.executable, __file__, "--child", dtype, "--steps", str(steps), "--threads", str(threads)]
    out = subprocess.run(command + (["--tiles", tiles] if tiles else []), env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(results: dict, trees: list[str], dtypes: list[str], threads: int, rounds: int) -> str:
    lines = [f"# Engine row-exactness cost ({MODEL}, 30 blocks, {threads} threads, {platform.processor() or 'CPU'}, "
             f"median of {rounds} rounds)", "",
             "Decode includes the LM head; batches, verify and prefill are blocks only. Trees alternate within "
             "every round.", "",
             "| dtype | tree | " + " | ".join(name for name, _ in FIGURES) + " |",
             "|---|---|" + "---|" * len(FIGURES)]
    for dtype in dtypes:
        for tree in trees:
            runs = results[dtype][tree]
            cells = [f"{statistics.median(r[key] for r in runs):.1f}" for _, key in FIGURES]
            lines.append(f"| {dtype} | {tree} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--trees", default=f"this={ROOT / 'src'}",
                        help="name=src_path[@tiles],... compared alternately (@4/1: dense tile candidates (4, 1))")
    parser.add_argument("--tiles", help=argparse.SUPPRESS)
    parser.add_argument("--dtypes", default=None,
                        help="compute dtypes, each optionally :int8 or :int4 (quantized blocks, int8 head); "
                             "default float32,bfloat16,bfloat16:int4 (--quick: float32)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=24, help="decode tokens per measurement")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="one round, float32, few steps (CI)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.threads, args.tiles)))
        return
    if args.quick:
        args.rounds, args.steps = 1, 4
    args.dtypes = args.dtypes or ("float32" if args.quick else "float32,bfloat16,bfloat16:int4")
    trees = dict(item.split("=", 1) for item in args.trees.split(","))
    dtypes = args.dtypes.split(",")
    results: dict = {d: {t: [] for t in trees} for d in dtypes}
    load_before = os.getloadavg()[0]
    for round_index in range(args.rounds):
        for dtype in dtypes:
            order = list(trees) if round_index % 2 == 0 else list(reversed(trees))
            for tree in order:
                results[dtype][tree].append(run_child(trees[tree], dtype, args.steps, args.threads))
                print(round_index, dtype, tree, results[dtype][tree][-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "engine_rows_quick" if args.quick else "engine_rows"
    record = {"model": MODEL, "threads": args.threads, "rounds": args.rounds, "steps": args.steps, "trees": trees,
              "load_average_before_after": [load_before, os.getloadavg()[0]], "results": results}
    (out / f"{name}.json").write_text(json.dumps(record, indent=2))
    text = table(results, list(trees), dtypes, args.threads, args.rounds)
    text += f"\nLoad average (1 min) before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f}\n"
    (out / f"{name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
