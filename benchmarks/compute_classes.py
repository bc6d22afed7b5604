"""How far apart compute classes are: the data behind the cross-class tolerance of docs/verification.md.

Two servers of one compute class give bit-identical outputs (tests/unit/test_compute_class.py);
across classes they differ, and verification has to tell those honest differences from a lie.
For each bundled model and each class this CPU runs (float32 is the reference; float32 with
another thread count, bfloat16, int8 weights, int4 weights, int8 KV cache), the script compares
--positions positions per prompt (its last position and the ones decoded after it), teacher-forced on the float32 reference's own greedy
tokens (so every class sees the same inputs at every position, and its KV cache accumulates its
own rounding as a server's does), and compares at every position:
- the last block's output hidden state (what the chain's last server returns) and the logits (a
  float32 head over it, the same for every class, so only the blocks' class differs): max
  relative error = max |x_class - x_ref| / max |x_ref|, and the relative L2 error;
- the next-token distribution: top-1 agreement, top-5 overlap, and the reference's top-1 margin
  (logit of its top token minus its second) where the top-1 tokens disagree.
The tolerance rule derived from these numbers is written in docs/verification.md.

    python benchmarks/compute_classes.py                 # both models: results/compute_classes.{json,md}
    python benchmarks/compute_classes.py --tiny --out /tmp/cc.json   # CI: one model, a few positions
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

PROMPTS = ["Write a short story about a robot who learns to paint.", "List five facts about the moon.",
           "Explain how a bicycle stays upright.", "def fibonacci(n):"]
# (name, compute dtype, weight quant, KV dtype, threads: None = the run's)
CLASSES = [("float32", "float32", "none", "auto", None), ("float32, 1 thread", "float32", "none", "auto", 1),
           ("bfloat16", "bfloat16", "none", "auto", None), ("int8 weights", "float32", "int8", "auto", None),
           ("int4 weights", "float32", "int4", "auto", None), ("int8 KV", "float32", "none", "int8", None)]
RESULTS = Path(__file__).parent / "results"


def _errors(x: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    x, ref = x.double(), ref.double()
    diff = (x - ref).abs()
    return float(diff.max() / ref.abs().max()), float(diff.norm() / ref.norm())


def _decode(span, head, inputs: list[int], n_prompt: int, kv_dtype: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(last-block hidden [P, D], logits [P, V]) at the prompt's last position and each decoded one."""
    cache = span.new_cache(len(inputs) + 1, kv_dtype=kv_dtype)
    hidden = [span(head.embed([inputs[:n_prompt]]), cache, 0)[0, -1:]]
    for position in range(n_prompt, len(inputs)):
        hidden.append(span(head.embed([[inputs[position]]]), cache, position)[0])
    hidden = torch.cat(hidden).float()
    return hidden, head.logits(hidden[None].to(head.dtype))[0].float()


def measure_model(model_id: str, prompts: list[str], positions: int, classes: list[tuple]) -> dict:
    from swarmllm.engine.generation import generate
    from swarmllm.engine.sampling import SamplingParams
    from swarmllm.runtime import ClientModel, load_span

    client = ClientModel.load(model_id, torch.float32)
    head, config = client.head, client.config
    no_eos = type("NoEos", (), {"eos_token_ids": (), "decode": client.tokenizer.decode})()
    threads = torch.get_num_threads()
    rows, reference, sequences = [], None, []
    for name, dtype, quant, kv_dtype, class_threads in classes:
        torch.set_num_threads(class_threads or threads)
        started = time.perf_counter()
        span = load_span(client.source, 0, config.n_blocks, getattr(torch, dtype), quant, config)
        if reference is None:  # the float32 reference's own greedy tokens: every class is fed these
            for prompt in prompts:
                ids = client.prompt_ids(prompt)
                cache = span.new_cache(len(ids) + positions + 1)
                result = generate(head, no_eos, lambda h, p, c=cache: span(h, c, p), ids,
                                  SamplingParams(max_new_tokens=positions), len(ids) + positions + 1)
                sequences.append((ids + result.token_ids[:-1], len(ids)))
        outputs = [_decode(span, head, inputs, n_prompt, kv_dtype) for inputs, n_prompt in sequences]
        if reference is None:
            reference = outputs
        rows.append(_compare(name, dtype, quant, kv_dtype, class_threads or threads, outputs, reference,
                             time.perf_counter() - started, span.row_tile))
        del span
        torch.set_num_threads(threads)
        print(json.dumps({"model": model_id, **rows[-1]}), flush=True)
    return {"model": model_id, "n_blocks": config.n_blocks, "prompts": len(prompts), "positions": positions,
            "classes": rows}


def _compare(name, dtype, quant, kv_dtype, threads, outputs, reference, seconds, row_tile) -> dict:
    hidden_max, hidden_l2, logits_max, logits_l2, top1, top5, margins = [], [], [], [], [], [], []
    for (hidden, logits), (ref_hidden, ref_logits) in zip(outputs, reference):
        for p in range(hidden.shape[0]):
            a, b = _errors(hidden[p], ref_hidden[p])
            hidden_max.append(a)
            hidden_l2.append(b)
            a, b = _errors(logits[p], ref_logits[p])
            logits_max.append(a)
            logits_l2.append(b)
            ref_top = torch.topk(ref_logits[p], 5)
            top = torch.topk(logits[p], 5).indices
            top1.append(int(top[0] == ref_top.indices[0]))
            top5.append(len(set(top.tolist()) & set(ref_top.indices.tolist())) / 5)
            if top[0] != ref_top.indices[0]:
                margins.append(float(ref_top.values[0] - ref_top.values[1]))
    return {
        "class": name, "compute_dtype": dtype, "weight_quant": quant, "kv_dtype": kv_dtype, "threads": threads,
        "row_tile": row_tile, "positions_compared": len(top1),
        "hidden_max_rel_error": max(hidden_max), "hidden_max_rel_error_p50": statistics.median(hidden_max),
        "hidden_rel_l2_max": max(hidden_l2),
        "logits_max_rel_error": max(logits_max), "logits_max_rel_error_p50": statistics.median(logits_max),
        "logits_rel_l2_max": max(logits_l2),
        "top1_agreement": sum(top1) / len(top1), "top5_overlap": sum(top5) / len(top5),
        "top1_disagreements": len(margins), "max_ref_margin_at_disagreement": max(margins, default=0.0),
        "seconds": round(seconds, 1),
    }


def tolerance(models: list[dict]) -> dict:
    """The cross-class rule's numbers (docs/verification.md): per class, the worst error seen over every
    model, prompt and position, and the derived tolerance (2x the worst, over float32)."""
    per_class: dict[str, dict] = {}
    for model in models:
        for row in model["classes"]:
            entry = per_class.setdefault(row["class"], {"hidden_max_rel_error": 0.0, "logits_max_rel_error": 0.0,
                                                        "max_ref_margin_at_disagreement": 0.0, "top1_agreement": 1.0})
            for key in ("hidden_max_rel_error", "logits_max_rel_error", "max_ref_margin_at_disagreement"):
                entry[key] = max(entry[key], row[key])
            entry["top1_agreement"] = min(entry["top1_agreement"], row["top1_agreement"])
    for entry in per_class.values():
        entry["epsilon"] = entry["hidden_max_rel_error"]  # vs float32
        entry["token_margin"] = 2 * entry["max_ref_margin_at_disagreement"]
    return per_class


def markdown(result: dict) -> str:
    lines = ["# Compute classes vs float32", "",
             f"{result['machine']}, torch {result['torch']}, {result['threads']} threads. Teacher-forced on the float32 "
             f"reference's greedy tokens: {result['positions']} positions compared per chat prompt ({result['prompts']} "
             f"prompts): the prompt's last and the {result['positions'] - 1} decoded after it. Hidden: the last block's output; logits: a float32 head "
             "over it. Max rel = max |x - x_ref| / max |x_ref|; L2 rel = |x - x_ref| / |x_ref|; margin: the "
             "reference's top-1 minus top-2 logit where the top-1 tokens disagree.", "",
             "| model | class | row tile | hidden max rel (max / p50) | hidden L2 rel max | logits max rel (max / p50) "
             "| top-1 agree | top-5 overlap | disagreements | max margin there |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for model in result["models"]:
        for r in model["classes"]:
            lines.append(f"| {model['model']} | {r['class']} | {r['row_tile']} | {r['hidden_max_rel_error']:.2e} / "
                         f"{r['hidden_max_rel_error_p50']:.2e} | {r['hidden_rel_l2_max']:.2e} | "
                         f"{r['logits_max_rel_error']:.2e} / {r['logits_max_rel_error_p50']:.2e} | "
                         f"{r['top1_agreement']:.1%} | {r['top5_overlap']:.1%} | {r['top1_disagreements']} / "
                         f"{r['positions_compared']} | {r['max_ref_margin_at_disagreement']:.3f} |")
    lines += ["", "Derived (docs/verification.md): epsilon = the worst hidden max rel error over both models; two "
              "outputs of classes A and B agree when max |a - b| <= 2 (epsilon_A + epsilon_B) max |a|; a token of "
              "class B is accepted by a class-A replica if it is A's top-1 or A's top-1 leads it by less than "
              "2x the largest margin seen at a disagreement.", "",
              "| class | epsilon (hidden) | tolerance vs float32 | worst top-1 agreement | token margin |",
              "|---|---|---|---|---|"]
    for name, entry in result["tolerance"].items():
        lines.append(f"| {name} | {entry['epsilon']:.2e} | {2 * entry['epsilon']:.2e} | {entry['top1_agreement']:.1%} | "
                     f"{entry['token_margin']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--positions", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=len(PROMPTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="smollm2 only, 1 prompt, 4 positions, 2 classes")
    parser.add_argument("--out", default=str(RESULTS / "compute_classes.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    classes = CLASSES
    if args.tiny:
        args.models, args.positions, args.prompts = ["smollm2-135m"], 4, 1
        classes = [CLASSES[0], CLASSES[5]]
    from swarmllm.runtime.compute_class import isa_class

    with torch.inference_mode():
        models = [measure_model(m, PROMPTS[:args.prompts], args.positions, classes) for m in args.models]
    result = {"machine": isa_class(), "torch": torch.__version__, "threads": args.threads,
              "positions": args.positions, "prompts": args.prompts, "models": models, "tolerance": tolerance(models)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
