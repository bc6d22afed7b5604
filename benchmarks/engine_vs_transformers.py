"""Decode speed of the swarmllm engine vs transformers `generate` on the same weights and dtype.

Both run the same dequantized GGUF weights (transformers loads them through its own GGUF
converter), fp32, greedy, the same chat prompt. Writes JSON (and prints a markdown table).

    python benchmarks/engine_vs_transformers.py --model smollm2-135m --new-tokens 64 --out artifacts/engine_vs_hf.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch


def load_transformers(path: str, dtype: torch.dtype = torch.float32):
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder, name = os.path.dirname(path), os.path.basename(path)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder, gguf_file=name), dtype=dtype)
    model.load_state_dict(load_gguf_checkpoint(path, return_tensors=True, model_to_load=model)["tensors"], strict=False)
    model.tie_weights()
    return model.to(dtype).eval()


def time_transformers(model, prompt_ids: list[int], new_tokens: int, repeats: int) -> dict:
    ids = torch.tensor([prompt_ids])
    kwargs = dict(do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
    with torch.inference_mode():
        model.generate(ids, **{**kwargs, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
        best = None
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.generate(ids, **{**kwargs, "max_new_tokens": 1, "min_new_tokens": 1})
            t1 = time.perf_counter()
            out = model.generate(ids, **kwargs)
            t2 = time.perf_counter()
            ttft, total = t1 - t0, t2 - t1
            rate = (new_tokens - 1) / (total - ttft)
            if best is None or rate > best["decode_tokens_per_s"]:
                best = {"ttft_s": ttft, "total_s": total, "decode_tokens_per_s": rate}
    best["token_ids"] = out[0, len(prompt_ids):].tolist()
    return best


def time_engine(local, prompt_ids: list[int], new_tokens: int, repeats: int) -> dict:
    from swarmllm.engine.generation import generate
    from swarmllm.engine.sampling import SamplingParams

    params = SamplingParams(max_new_tokens=new_tokens)
    no_eos = type("NoEos", (), {"eos_token_ids": (), "decode": local.tokenizer.decode})()  # match min_new_tokens
    generate(local.head, no_eos, local.new_forward_fn(), prompt_ids, SamplingParams(max_new_tokens=4))
    best = None
    for _ in range(repeats):
        result = generate(local.head, no_eos, local.new_forward_fn(), prompt_ids, params)
        t = result.timings
        if best is None or t.decode_tokens_per_s > best["decode_tokens_per_s"]:
            best = {"ttft_s": t.ttft_s, "total_s": t.total_s, "decode_tokens_per_s": t.decode_tokens_per_s,
                    "token_ids": result.token_ids}
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--out", default="artifacts/engine_vs_transformers.json")
    args = parser.parse_args()

    from swarmllm.runtime import LocalModel
    from swarmllm.models.catalog import resolve_model

    source = resolve_model(args.model)
    dtype = getattr(torch, args.dtype)
    local = LocalModel.load(source, dtype, max_length=1024)
    prompt_ids = local.chat_ids([{"role": "user", "content": "Write a short poem about the sea."}])
    ours = time_engine(local, prompt_ids, args.new_tokens, args.repeats)
    theirs = time_transformers(load_transformers(source.path, dtype), prompt_ids, args.new_tokens, args.repeats)
    report = {
        "model": args.model, "dtype": args.dtype, "new_tokens": args.new_tokens, "threads": torch.get_num_threads(),
        "prompt_tokens": len(prompt_ids), "swarmllm": ours, "transformers": theirs,
        "speedup_decode": ours["decode_tokens_per_s"] / theirs["decode_tokens_per_s"],
        "same_tokens": ours["token_ids"] == theirs["token_ids"],
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    print("| engine | decode tok/s | ttft s |\n|---|---|---|")
    for name in ("swarmllm", "transformers"):
        print(f"| {name} | {report[name]['decode_tokens_per_s']:.1f} | {report[name]['ttft_s']:.3f} |")
    print(f"speedup {report['speedup_decode']:.2f}x, same tokens: {report['same_tokens']}")


if __name__ == "__main__":
    main()
