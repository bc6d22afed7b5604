"""Recipes: for each model family and weight quantization, what a swarm of 3 nodes gets.

For every (model, --quant) it starts a real 3-node swarm on loopback (`swarmllm serve
--quant Q`) and measures decode tokens/s through the chain (greedy, client head included),
node start-up time (process start to ready, imports included) and the weights' memory per
block as the engine holds them. Real-weight models (smollm2-135m, gemma3-270m) also get
perplexity on a held text and the mean KL of the next-token distribution against the
highest precision (fp32, no quantization), computed in-process by the same engine.
Random-weight families (Qwen2, Qwen3, Mistral, Phi-3: tiny checkpoints written as GGUF by
the test helper) report speed and memory only: their text quality means nothing.

    python benchmarks/recipes.py [--quants none,int8,int4] [--tokens 24] [--held 256]
writes benchmarks/results/recipes.json and docs/recipes.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "unit"))  # the tiny-checkpoint writer of the family tests

from swarmllm.client.generation import ClientModel, generate_text  # noqa: E402
from swarmllm.client.swarm_client import SwarmClient  # noqa: E402
from swarmllm.engine.blocks import SpanModel  # noqa: E402
from swarmllm.engine.head import ModelHead  # noqa: E402
from swarmllm.engine.quant import Linear  # noqa: E402
from swarmllm.engine.sampling import SamplingParams  # noqa: E402
from swarmllm.harness.local_swarm import LocalSwarm, even_spans  # noqa: E402
from swarmllm.models.catalog import resolve_model  # noqa: E402
from swarmllm.weights import load_blocks, load_head, read_config  # noqa: E402

REAL = ["smollm2-135m", "gemma3-270m"]
RANDOM = ["qwen2", "qwen3", "mistral", "phi3"]
PROMPT = "Write a short paragraph about lighthouses."


def block_megabytes(model: str, quant: str, dtype: torch.dtype) -> float:
    """Bytes of block 0 as the engine holds it (quantized layers at their packed size)."""
    source = resolve_model(model)
    config = read_config(source)
    span = SpanModel(config, load_blocks(source, config, 0, 1, dtype, keep_int4=quant == "int4"), 0, 1, dtype,
                     quant=quant)
    total = 0
    for value in vars(span.layers[0]).values():
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif isinstance(value, Linear):
            total += value.nbytes
    return total / 1e6


def quality(model: str, quant: str, held: list[int], reference: torch.Tensor | None) -> tuple[float, float, torch.Tensor]:
    """(perplexity, mean KL vs reference, log-probs) of the held text, fp32 compute, in-process."""
    source = resolve_model(model)
    config = read_config(source)
    dtype = torch.float32
    span = SpanModel(config, load_blocks(source, config, 0, config.n_blocks, dtype, keep_int4=quant == "int4"),
                     0, config.n_blocks, dtype, quant=quant)
    head = ModelHead(config, load_head(source, config, dtype), dtype)
    ids = torch.tensor([held])
    with torch.inference_mode():
        hidden = span.forward(head.embed(ids), span.new_cache(len(held)), 0)
        logp = torch.log_softmax(head.logits(hidden)[0, :-1].float(), dim=-1)
    nll = -logp.gather(1, ids[0, 1:, None]).mean().item()
    kl = 0.0 if reference is None else (reference.exp() * (reference - logp)).sum(-1).mean().item()
    return math.exp(nll), kl, logp


def chain_speed(model_path: str, quant: str, tokens: int, real: bool, log_dir: Path) -> dict:
    """Decode tokens/s and node start-up through a real 3-node swarm serving with --quant."""
    n_blocks = read_config(resolve_model(model_path)).n_blocks
    swarm = LocalSwarm(model_path, even_spans(n_blocks, 3), log_dir=log_dir, node_args=("--quant", quant))
    swarm.start(timeout=300)
    try:
        startup = [n.ready["startup_seconds"] for n in swarm.nodes]
        with SwarmClient.connect(swarm.initial_peers) as client:
            if real:
                generate_text(model_path, "hi", SamplingParams(max_new_tokens=2), client=client)  # warm-up
                result = generate_text(model_path, PROMPT, SamplingParams(max_new_tokens=tokens), client=client)
                speed = result.timings.decode_tokens_per_s
            else:  # no tokenizer worth the name: time chain steps of one position (head excluded)
                config = read_config(resolve_model(model_path))
                model_id = resolve_model(model_path).model_id
                with client.open_session(model_id, n_blocks, tokens + 8) as session:
                    hidden = torch.randn(1, 1, config.hidden_size)
                    session.forward(hidden, 0)
                    started = time.perf_counter()
                    for position in range(1, tokens + 1):
                        session.forward(hidden, position)
                    speed = tokens / (time.perf_counter() - started)
    finally:
        swarm.stop()
    return {"tokens_per_second_3_nodes": speed, "startup_seconds_median": statistics.median(startup)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quants", default="none,int8,int4")
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--held", type=int, default=256, help="held-text tokens for perplexity and KL")
    parser.add_argument("--models", default=",".join(REAL + RANDOM))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--doc", default=str(ROOT / "docs" / "recipes.md"))
    args = parser.parse_args()
    quants = args.quants.split(",")
    work = Path(tempfile.mkdtemp(prefix="swarmllm-recipes-"))
    held_text = (ROOT / "benchmarks" / "data" / "held_text.txt").read_text()
    rows = []
    for model in args.models.split(","):
        real = model in REAL
        if real:
            path = model
            tokenizer = ClientModel.load(model).tokenizer
            held = tokenizer.encode(held_text)[:args.held]
        else:
            from tiny_checkpoints import save_gguf, tiny_model
            path = str(save_gguf(tiny_model(model, seed=0), work / f"tiny-{model}.gguf"))
        config = read_config(resolve_model(path))
        reference = None
        for quant in quants:
            row = {"model": model, "family": config.family, "weights": "real" if real else "random (tiny)",
                   "quant": quant, "n_blocks": config.n_blocks,
                   "block_mb_bf16": block_megabytes(path, quant, torch.bfloat16)}
            if real:
                row["perplexity"], row["kl_vs_fp32"], logp = quality(path, quant, held, reference)
                reference = logp if reference is None else reference
            row.update(chain_speed(path, quant, args.tokens, real, work / f"{model}-{quant}"))
            rows.append(row)
            print(json.dumps(row), flush=True)
    report = {"benchmark": "recipes", "cpus": os.cpu_count(), "load_average": os.getloadavg(),
              "tokens": args.tokens, "held_tokens": args.held, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipes.json").write_text(json.dumps(report, indent=2))
    Path(args.doc).write_text(markdown(report))
    print(markdown(report))


def markdown(r: dict) -> str:
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    lines = ["# Recipes: model families and weight quantization", "",
             f"Generated by `python benchmarks/recipes.py` into `benchmarks/results/recipes.json` "
             f"({r['cpus']} CPUs, load average {r['load_average'][0]:.1f} at the end). Each row is a real swarm of 3 "
             "nodes on loopback serving the model with `swarmllm serve --quant Q` (compute dtype: auto, bf16 on "
             "this CPU). Perplexity and KL (mean KL of the next-token distribution against fp32 without "
             f"quantization) are over {r['held_tokens']} tokens of `benchmarks/data/held_text.txt`, computed "
             "in fp32 by the same engine. Random-weight families are tiny checkpoints (hidden size 64) made by the "
             "test helper: **speed and memory only**, and their tokens/s are chain steps without an LM head.", "",
             "| model | family | weights | quant | blocks | MB/block (held) | perplexity | KL vs fp32 | "
             "tokens/s, 3 nodes | node start-up s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['model']} | {row['family']} | {row['weights']} | {row['quant']} | {row['n_blocks']} | "
                     f"{row['block_mb_bf16']:.2f} | {fmt(row.get('perplexity'), '.2f')} | "
                     f"{fmt(row.get('kl_vs_fp32'), '.4f')} | {row['tokens_per_second_3_nodes']:.1f} | "
                     f"{row['startup_seconds_median']:.1f} |")
    lines += ["", "How to pick: `none` keeps the engine's exact match with transformers; `int4` keeps a GGUF's own "
              "4-bit codes (no second rounding), so on Q4 files it is both the smallest and the closest to the "
              "file; a file whose blocks are not Q4 (gemma3-270m's \"Q4_K_M\" file stores most block tensors as Q5_0) "
              "is rounded a second time by `int4`, which is why its KL is 30x that of `int8` there. `int8` "
              "re-quantizes per row and suits fp16/fp32 sources. Quantized layers compute in bf16 "
              "(PyTorch's fp32 int8/int4 CPU kernels are scalar and 40-100x slower)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
