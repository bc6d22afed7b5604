"""Calibration of weight quantization on a held text: how much error each method leaves.

For every projection of every block (q|k|v, o, gate|up, down), the inputs it sees while the
float32 model reads the held text (benchmarks/data/held_text.txt) are recorded. The first half
of the text calibrates (per-input-channel mean squared activation = importance), the second
half measures: relative output error ||X (W - Wq)^T|| / ||X W^T|| of
- int8: per-row absmax (what `--quant int8` does);
- int4 RTN: groups of 32, round to nearest (what `--quant int4` does for non-4-bit tensors);
- int4 clip: RTN with a per-group clip search minimizing plain squared weight error;
- int4 clip+act: the same search weighted by calibration activations (GPTQ-lite);
- int4 GGUF codes: the file's own 4-bit codes where the tensor is Q4_0/Q4_1/Q4_K.
W is the GGUF's dequantized float32 weight (the highest precision we have). The runtime uses
int8 absmax and int4 RTN / GGUF codes; the clip variants show what calibration would buy.

    python benchmarks/calibrate.py --models smollm2-135m gemma3-270m --out benchmarks/results/calibrate.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch

HELD_TEXT = Path(__file__).parent / "data" / "held_text.txt"
METHODS = ("int8", "int4 RTN", "int4 clip", "int4 clip+act", "int4 GGUF codes")


class _Recorder:
    """Wraps a DenseLinear: records its inputs, returns its output unchanged."""

    def __init__(self, linear, store: list) -> None:
        self.linear, self.store = linear, store

    def __call__(self, x):
        self.store.append(x.detach().float().clone())
        return self.linear(x)


def _relative_error(x: torch.Tensor, w: torch.Tensor, wq: torch.Tensor) -> float:
    return float((x @ (w - wq).T).norm() / (x @ w.T).norm())


def calibrate(model_name: str, max_tokens: int) -> dict:
    from swarmllm.engine.blocks import SpanModel
    from swarmllm.engine.head import ModelHead
    from swarmllm.engine.quant import quantize_int4, quantize_int8
    from swarmllm.models.catalog import resolve_model
    from swarmllm.weights.tokenizer import load_tokenizer
    from swarmllm.weights import Int4Codes, load_blocks, load_head, read_config

    source = resolve_model(model_name)
    config = read_config(source)
    floats = load_blocks(source, config, 0, config.n_blocks)
    codes = load_blocks(source, config, 0, config.n_blocks, keep_int4=True)
    span = SpanModel(config, floats, 0, config.n_blocks)
    head = ModelHead(config, load_head(source, config))
    ids = load_tokenizer(source).encode(HELD_TEXT.read_text(encoding="utf-8"))[:max_tokens]
    inputs: dict[tuple[int, str], list] = defaultdict(list)
    for i, layer in enumerate(span.layers):
        for kind in ("qkv", "o", "gate_up", "down"):
            object.__setattr__(layer, kind, _Recorder(getattr(layer, kind), inputs[(i, kind)]))
    span.forward(head.embed(ids), span.new_cache(len(ids)), 0)
    half = len(ids) // 2
    parts = {"qkv": ("q", "k", "v"), "o": ("o",), "gate_up": ("gate", "up"), "down": ("down",)}
    errors: dict[str, dict[str, list[float]]] = {m: defaultdict(list) for m in METHODS}
    for (i, kind), xs in inputs.items():
        x = xs[0][:len(ids)]
        calib, test = x[:half], x[half:]
        importance = calib.square().mean(0)
        w = torch.cat([getattr(floats[i], p) for p in parts[kind]]).float()
        codes8, scales8 = quantize_int8(w)
        quantized = {
            "int8": codes8.float() * scales8[:, None],
            "int4 RTN": quantize_int4(w).dequantize(),
            "int4 clip": quantize_int4(w, clip_search=True).dequantize(),
            "int4 clip+act": quantize_int4(w, clip_search=True, importance=importance).dequantize(),
        }
        kept = [getattr(codes[i], p) for p in parts[kind]]
        if all(isinstance(c, Int4Codes) for c in kept):
            quantized["int4 GGUF codes"] = torch.cat([c.dequantize() for c in kept])
        for method, wq in quantized.items():
            errors[method][kind].append(_relative_error(test, w, wq))
    return {method: {kind: sum(v) / len(v) for kind, v in by_kind.items()} for method, by_kind in errors.items()}


def markdown(report: dict) -> str:
    lines = ["# Weight quantization error on a held text", "",
             "Mean over blocks of the relative output error ||X (W - Wq)^T|| / ||X W^T||, X = the projection's "
             "inputs on the second half of benchmarks/data/held_text.txt (the first half calibrates `clip+act`). "
             "W = the GGUF's dequantized weights. '-' = the file has no 4-bit codes for that projection.", ""]
    for model, methods in report["models"].items():
        lines += [f"## {model}", "", "| method | q\\|k\\|v | o | gate\\|up | down |", "|---|---|---|---|---|"]
        for method in METHODS:
            row = methods.get(method, {})
            cells = [f"{row[k]:.4f}" if k in row else "-" for k in ("qkv", "o", "gate_up", "down")]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m"])
    parser.add_argument("--max-tokens", type=int, default=384)
    parser.add_argument("--out", default="benchmarks/results/calibrate.json")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    report = {"held_tokens": args.max_tokens, "models": {m: calibrate(m, args.max_tokens) for m in args.models}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
