"""Weight quantization: our engine (none / int8 / int4 weights, bf16 and fp32 compute) vs llama.cpp
on the same GGUF, one process per configuration, the same thread count.

Per configuration: decode tokens/s (greedy, --new-tokens, the same chat prompt), prompt
processing tokens/s (one prefill of the held text's first --prompt-tokens tokens), peak RSS,
start-up (process start to model ready), weight bytes per block and of the head, perplexity
on a held text (benchmarks/data/held_text.txt) and the mean KL divergence of the next-token
distribution from the highest-precision configuration (float32, no quantization), and how
many greedy tokens match it. llama.cpp runs through llama-cpp-python installed in a separate
venv (--llamacpp-python); if it is missing its row says so.

    python benchmarks/quant.py --models smollm2-135m gemma3-270m --threads 2 \\
        --out benchmarks/results/quant.json        # also writes quant.md beside it
    python benchmarks/quant.py --tiny               # CI: one model, few tokens, no llama.cpp
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HELD_TEXT = Path(__file__).parent / "data" / "held_text.txt"
PROMPT = "Write a short story about a robot who learns to paint."
CONFIGS = [("float32", "none"), ("float32", "int8"), ("float32", "int4"),
           ("bfloat16", "none"), ("bfloat16", "int8"), ("bfloat16", "int4")]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _held_ids(tokenizer, limit: int) -> list[int]:
    return tokenizer.encode(HELD_TEXT.read_text(encoding="utf-8"))[:limit]


def worker_engine(args) -> dict:
    """One configuration of our engine, in its own process."""
    import torch

    torch.set_num_threads(args.threads)
    from swarmllm.engine.generation import generate
    from swarmllm.runtime import LocalModel
    from swarmllm.engine.sampling import SamplingParams

    dtype = getattr(torch, args.dtype)
    loaded = time.perf_counter()
    model = LocalModel.load(args.model, dtype, max_length=1024, quant=args.quant)
    load_s = time.perf_counter() - loaded
    ready_at = time.time()
    rss_loaded = _peak_rss_mb()
    prompt_ids = model.chat_ids([{"role": "user", "content": PROMPT}])
    no_eos = type("NoEos", (), {"eos_token_ids": (), "decode": model.tokenizer.decode})()
    generate(model.head, no_eos, model.new_forward_fn(), prompt_ids, SamplingParams(max_new_tokens=4))  # warm-up
    best = None
    for _ in range(args.repeats):
        result = generate(model.head, no_eos, model.new_forward_fn(), prompt_ids,
                          SamplingParams(max_new_tokens=args.new_tokens))
        if best is None or result.timings.decode_tokens_per_s > best.timings.decode_tokens_per_s:
            best = result

    held = _held_ids(model.tokenizer, args.held_tokens)
    pp = held[:args.prompt_tokens]
    pp_rates = []
    for _ in range(args.repeats):
        forward_fn = model.new_forward_fn(len(pp) + 1)
        started = time.perf_counter()
        model.head.logits(forward_fn(model.head.embed(pp), 0)[:, -1:])
        pp_rates.append(len(pp) / (time.perf_counter() - started))
    with torch.inference_mode():
        logits = model.head.logits(model.new_forward_fn(len(held) + 1)(model.head.embed(held), 0))[0, :-1]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        nll = -logprobs.gather(1, torch.tensor(held[1:])[:, None]).mean().item()
    torch.save(logprobs, args.logprobs_out)
    return {
        "engine": "swarmllm", "model": args.model, "dtype": args.dtype, "quant": args.quant, "threads": args.threads,
        "decode_tokens_per_s": best.timings.decode_tokens_per_s, "prompt_tokens_per_s": max(pp_rates),
        "prompt_tokens": len(pp), "load_s": load_s, "ready_at": ready_at, "rss_after_load_mb": rss_loaded, "peak_rss_mb": _peak_rss_mb(),
        "weight_bytes_per_block": model.span.weight_bytes_per_block, "head_bytes": model.head.nbytes,
        "perplexity": float(torch.exp(torch.tensor(nll))), "held_tokens": len(held),
        "token_ids": best.token_ids, "prompt_ids": prompt_ids, "held_ids": held,
    }


def worker_llamacpp(args) -> dict:
    """llama.cpp through llama-cpp-python (run under its own venv's python); token ids come in."""
    import numpy as np
    from llama_cpp import Llama

    spec = json.loads(Path(args.spec).read_text())
    loaded = time.perf_counter()
    options = dict(model_path=spec["path"], n_ctx=1024, n_threads=args.threads, n_threads_batch=args.threads,
                   n_batch=512, verbose=False)
    llm = Llama(**options)
    load_s = time.perf_counter() - loaded
    ready_at = time.time()
    rss_loaded = _peak_rss_mb()
    best = None
    for _ in range(args.repeats + 1):  # the first run warms up
        llm.reset()
        llm.eval(spec["prompt_ids"])
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        tokens = [token]
        started = time.perf_counter()
        for _ in range(args.new_tokens - 1):
            llm.eval([token])
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            tokens.append(token)
        rate = (args.new_tokens - 1) / (time.perf_counter() - started)
        if best is None or rate > best[0]:
            best = (rate, tokens)
    pp = spec["held_ids"][:args.prompt_tokens]
    pp_rates = []
    for _ in range(args.repeats):
        llm.reset()
        started = time.perf_counter()
        llm.eval(pp)
        pp_rates.append(len(pp) / (time.perf_counter() - started))
    held = spec["held_ids"]
    del llm
    llm = Llama(**options, logits_all=True)  # logits of every position, for perplexity only
    llm.eval(held)
    logits = np.asarray(llm.scores[:len(held) - 1], dtype=np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    logprobs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    nll = -logprobs[np.arange(len(held) - 1), held[1:]].mean()
    np.save(args.logprobs_out, logprobs.astype(np.float32))
    import llama_cpp

    return {
        "engine": f"llama.cpp (llama-cpp-python {llama_cpp.__version__})", "model": args.model, "dtype": "gguf",
        "quant": "gguf as is", "threads": args.threads, "decode_tokens_per_s": best[0],
        "prompt_tokens_per_s": max(pp_rates), "prompt_tokens": len(pp), "load_s": load_s, "ready_at": ready_at,
        "rss_after_load_mb": rss_loaded, "peak_rss_mb": _peak_rss_mb(), "weight_bytes_per_block": None,
        "head_bytes": None, "perplexity": float(np.exp(nll)), "held_tokens": len(held), "token_ids": best[1],
    }


def _run_worker(python: str, argv: list[str], timeout: float) -> dict:
    started = time.time()
    out = subprocess.run([python, __file__, *argv], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        return {"error": (out.stderr or out.stdout).strip().splitlines()[-1:] or ["failed"]}
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["startup_s"] = row.pop("ready_at") - started  # process start to model ready, imports included
    return row


def _kl(reference, other) -> float:
    """Mean over positions of KL(reference || other), natural log."""
    p = reference.exp()
    return float((p * (reference - other)).sum(-1).mean())


def bench_model(args, model: str) -> list[dict]:
    import numpy as np
    import torch

    from swarmllm.models.catalog import resolve_model

    rows, logprobs = [], {}
    tmp = Path(tempfile.mkdtemp(prefix="swarmllm-quant-"))
    common = ["--model", model, "--threads", str(args.threads), "--new-tokens", str(args.new_tokens),
              "--repeats", str(args.repeats), "--prompt-tokens", str(args.prompt_tokens),
              "--held-tokens", str(args.held_tokens)]
    for dtype, quant in args.configs:
        out = tmp / f"{dtype}-{quant}.pt"
        row = _run_worker(sys.executable, ["--worker", "engine", "--dtype", dtype, "--quant", quant,
                                           "--logprobs-out", str(out), *common], args.timeout)
        row.setdefault("engine", "swarmllm")
        row.update(model=model, dtype=dtype, quant=quant)
        if "error" not in row:
            logprobs[(dtype, quant)] = torch.load(out)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if not k.endswith("_ids")}), file=sys.stderr)
    reference_row = next((r for r in rows if "error" not in r), None)
    if args.llamacpp_python and reference_row is not None:
        if Path(args.llamacpp_python).exists():
            spec = tmp / "spec.json"
            spec.write_text(json.dumps({"path": resolve_model(model).path, "prompt_ids": reference_row["prompt_ids"],
                                        "held_ids": reference_row["held_ids"]}))
            out = tmp / "llamacpp.npy"
            row = _run_worker(args.llamacpp_python, ["--worker", "llamacpp", "--spec", str(spec),
                                                     "--logprobs-out", str(out), *common], args.timeout)
            if "error" not in row:
                logprobs[("gguf", "llama.cpp")] = torch.from_numpy(np.load(out))
        else:
            row = {"error": [f"no llama-cpp-python venv at {args.llamacpp_python}"]}
        row.setdefault("engine", "llama.cpp")
        row.update(model=model)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if not k.endswith("_ids")}), file=sys.stderr)
    reference = logprobs.get(("float32", "none"))
    fp32_row = next((r for r in rows if (r.get("dtype"), r.get("quant")) == ("float32", "none") and "error" not in r), None)
    for row in rows:
        key = (row.get("dtype"), row.get("quant")) if row["engine"] == "swarmllm" else ("gguf", "llama.cpp")
        if reference is not None and key in logprobs:
            row["kl_vs_fp32"] = _kl(reference, logprobs[key])
        if fp32_row is not None and "token_ids" in row:  # without a float32 run there is nothing to agree with
            ref = fp32_row["token_ids"]
            row["greedy_agreement_vs_fp32"] = sum(a == b for a, b in zip(ref, row["token_ids"])) / len(ref)
    for row in rows:
        for key in ("prompt_ids", "held_ids"):
            row.pop(key, None)
    return rows


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(report: dict) -> str:
    lines = [f"# Weight quantization vs llama.cpp ({report['threads']} threads, {report['cpu']})", "",
             f"Decode: greedy, {report['new_tokens']} tokens after a chat prompt, best of {report['repeats']}. "
             f"Prompt processing: one prefill of {report['prompt_tokens']} held-text tokens. Perplexity and KL "
             f"(mean KL(fp32 none || config) of the next-token distribution) over {report['held_tokens']} tokens of "
             "benchmarks/data/held_text.txt. Weight bytes: the 4 projections of one block (norms excluded). "
             "Start-up: process start to model ready (python imports included).", "",
             "| model | engine | compute | weights | decode tok/s | vs llama.cpp | prompt tok/s | MB/block | "
             "head MB | peak RSS MB | load s | start-up s | perplexity | KL vs fp32 | greedy = fp32 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for model, rows in report["models"].items():
        llama = next((r for r in rows if r["engine"].startswith("llama.cpp") and "error" not in r), None)
        for r in rows:
            if "error" in r:
                lines.append(f"| {model} | {r['engine']} | {r.get('dtype', '-')} | {r.get('quant', '-')} | "
                             f"failed: {' '.join(r['error'])[:120]} |" + " |" * 11)
                continue
            ratio = r["decode_tokens_per_s"] / llama["decode_tokens_per_s"] if llama else None
            mb = r["weight_bytes_per_block"] / 1e6 if r["weight_bytes_per_block"] else None
            head = r["head_bytes"] / 1e6 if r["head_bytes"] else None
            lines.append(
                f"| {model} | {r['engine']} | {r['dtype']} | {r['quant']} | {r['decode_tokens_per_s']:.1f} | "
                f"{_fmt(ratio, '.2f')}x | {r['prompt_tokens_per_s']:.0f} | {_fmt(mb, '.2f')} | {_fmt(head, '.1f')} | "
                f"{r['peak_rss_mb']:.0f} | {r['load_s']:.2f} | {r['startup_s']:.1f} | {r['perplexity']:.2f} | "
                f"{_fmt(r.get('kl_vs_fp32'), '.4f')} | {_fmt(r.get('greedy_agreement_vs_fp32'), '.0%')} |")
    return "\n".join(lines) + "\n"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown CPU")
    except OSError:
        return "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--held-tokens", type=int, default=384)
    parser.add_argument("--llamacpp-python", default="/work/llamacpp-venv/bin/python",
                        help="python of a venv with llama-cpp-python ('' to skip llama.cpp)")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--out", default="benchmarks/results/quant.json")
    parser.add_argument("--configs", nargs="+", metavar="DTYPE:QUANT",
                        help="only these engine configurations, e.g. bfloat16:int4 (default: all six)")
    parser.add_argument("--tiny", action="store_true", help="CI setting: few tokens, bf16 only, no llama.cpp")
    # worker mode (internal)
    parser.add_argument("--worker", choices=("engine", "llamacpp"))
    parser.add_argument("--model")
    parser.add_argument("--dtype")
    parser.add_argument("--quant")
    parser.add_argument("--spec")
    parser.add_argument("--logprobs-out")
    args = parser.parse_args()
    if args.worker:
        row = worker_engine(args) if args.worker == "engine" else worker_llamacpp(args)
        print(json.dumps(row))
        return
    args.configs = [tuple(c.split(":")) for c in args.configs] if args.configs else CONFIGS
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s) {unknown}; choose from {[':'.join(c) for c in CONFIGS]}")
    if args.tiny:
        args.new_tokens, args.repeats, args.prompt_tokens, args.held_tokens = 8, 1, 16, 32
        args.configs, args.llamacpp_python = [("float32", "none"), ("bfloat16", "int8"), ("bfloat16", "int4")], ""
    report = {"threads": args.threads, "cpu": _cpu_name(), "new_tokens": args.new_tokens, "repeats": args.repeats,
              "prompt_tokens": args.prompt_tokens, "held_tokens": args.held_tokens, "prompt": PROMPT,
              "models": {}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for model in args.models:  # written after each model, so a long run leaves what it finished
        report["models"][model] = bench_model(args, model)
        out.write_text(json.dumps(report, indent=2))
        out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
